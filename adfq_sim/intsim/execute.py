"""The fast integer simulator: an IntegerProgram run with the Numba kernels.

`run_simulator` runs the reference executor's own op sequence (`execute_reference.run_program`) with
an ops table of compiled kernels, so the two differ only in kernels that are tested equal one by one
(`kernels` vs `reference`, `nonlinear` vs `nonlinear_reference`, and the requantizations here use
`dyadic.requantize_one`, the reference rule compiled). The int32 accumulators of the GEMM kernels are
exact because export proved every layer's bound.

Storage: codes are int32 between ops; a GEMM operand (codes minus a zero-point, at most 9 bits) is
int16, and weights are narrowed once per Gemm to int8 when their values fit (int16 otherwise), the
fastest storage measured by `benchmarks/gemm_speed.py`.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import numba
import numpy as np
import torch
from numba import prange

from adfq_sim.intsim import kernels, nonlinear
from adfq_sim.intsim.dyadic import requantize_one
from adfq_sim.intsim.execute_reference import Ops, run_program
from adfq_sim.intsim.program import RESIDUAL_MAX, Gemm, IntegerProgram, Requant

CHUNK = 64  # images per pass: the kernels' per-call overhead amortises, memory stays small
_weights: WeakKeyDictionary[Gemm, np.ndarray] = WeakKeyDictionary()  # narrowed once per exported layer


@numba.njit(cache=True, inline="always")
def _rule(v, m, s, zp, lo, hi, j):
    """Requant's rule on one value of output channel j (m, s hold 1 or N entries)."""
    c = j if m.size > 1 else 0
    return requantize_one(np.int64(v), m[c], s[c], lo - zp, hi - zp) + zp


@numba.njit(cache=True, parallel=True)
def _requant_kernel(acc, m, s, zp, lo, hi, out):
    rows, n = acc.shape
    for i in prange(rows):
        for j in range(n):
            out[i, j] = _rule(acc[i, j], m, s, zp, lo, hi, j)


@numba.njit(cache=True, parallel=True)
def _add_kernel(a, ma, sa, zpa, loa, hia, b, mb, sb, zpb, lob, hib, limit, out):
    rows, n = a.shape
    for i in prange(rows):
        for j in range(n):
            total = _rule(a[i, j], ma, sa, zpa, loa, hia, j) + _rule(b[i, j], mb, sb, zpb, lob, hib, j)
            out[i, j] = min(max(total, -limit), limit)


def _requant(acc: np.ndarray, r: Requant) -> np.ndarray:
    out = np.empty(acc.shape, np.int32)
    _requant_kernel(acc, r.m, r.s, r.zero_point, r.lo, r.hi, out)
    return out


def _add(a: np.ndarray, ra: Requant, b: np.ndarray, rb: Requant) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"residual add of different shapes: {a.shape} vs {b.shape}")
    out = np.empty(a.shape, np.int32)
    _add_kernel(a, ra.m, ra.s, ra.zero_point, ra.lo, ra.hi, b, rb.m, rb.s, rb.zero_point, rb.lo, rb.hi,
                RESIDUAL_MAX, out)
    return out


def _operand(codes: np.ndarray, zp: int) -> np.ndarray:
    """codes - zp as int16: codes of at most 8 bits and a zero-point in that range cannot wrap."""
    if not 0 <= zp <= 255:
        raise ValueError(f"zero-point {zp} outside the 8-bit code range")
    return (codes - zp).astype(np.int16)


def _weight(g: Gemm) -> np.ndarray:
    w = _weights.get(g)
    if w is None:
        fits_int8 = g.weight.min() >= -128 and g.weight.max() <= 127
        w = np.ascontiguousarray(g.weight, dtype=np.int8 if fits_int8 else np.int16)
        _weights[g] = w
    return w


def _linear(codes: np.ndarray, g: Gemm) -> np.ndarray:
    return kernels.dense_gemm(_operand(codes, g.in_zero_point), _weight(g), g.bias)


SIMULATOR_OPS = Ops(operand=_operand, linear=_linear, matmul=kernels.dense_gemm, requant=_requant, add=_add,
                    layernorm=nonlinear.layernorm, softmax=nonlinear.softmax, gelu=nonlinear.gelu)


def run_simulator(program: IntegerProgram, images: np.ndarray | torch.Tensor
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`run_reference`'s logits and codes (same keys, same values), computed by the Numba kernels."""
    return run_program(program, images, SIMULATOR_OPS, CHUNK)
