"""The fast integer simulator: an IntegerProgram run with the Numba kernels.

`run_simulator` runs the reference executor's own op handlers (`execute_reference.run_program`) with
an ops table of compiled kernels, so the two differ only in kernels that are tested equal one by one
(`kernels` vs `reference`, `nonlinear` vs `nonlinear_reference`, and the requantizations here use
`dyadic.requantize_offset_one`, the reference rule compiled). The int32 accumulators of the GEMM kernels are
exact because export proved every layer's bound.

Storage: codes are int32 between ops, uint8 where every code of the op fits a byte (GELU, softmax:
the next GEMM reads them as they are); a GEMM operand (codes minus a zero-point, at most 9 bits) is
int16, and weights are narrowed once per Gemm to int8 when their values fit (int16 otherwise), the
fastest storage measured by `benchmarks/gemm_speed.py`.
"""

from __future__ import annotations

from typing import Callable
from weakref import WeakKeyDictionary

import numba
import numpy as np
import torch
from numba import prange

from adfq_sim.intsim import kernels, nonlinear
from adfq_sim.intsim.dyadic import requantize_offset_one
from adfq_sim.formats import RESIDUAL_MAX
from adfq_sim.intsim.execute_reference import Ops, run_program
from adfq_sim.intsim.nonlinear_reference import SOFTMAX_INPUT_MAX
from adfq_sim.intsim.ops import Gemm, Requant
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.threads import torch_threads_kept

CHUNK = 64  # images per pass: the kernels' per-call overhead amortises, memory stays small
_weights: WeakKeyDictionary[Gemm, np.ndarray] = WeakKeyDictionary()  # narrowed once per exported layer
_folded_bias: WeakKeyDictionary[Gemm, np.ndarray] = WeakKeyDictionary()
_narrowed_constants: WeakKeyDictionary[Gemm | Requant, tuple] = WeakKeyDictionary()


@numba.njit(cache=True, inline="always")
def _rule(v, m, s, offset, zp, lo, hi, j):
    """Requant's rule on one value of output channel j (m, s, offset: one row of 1 or N entries)."""
    c = j if m.size > 1 else 0
    o = offset[j] if offset.size > 1 else offset[0]
    return requantize_offset_one(np.int64(v), m[c], s[c], o, lo - zp, hi - zp) + zp


@numba.njit(cache=True, parallel=True)
def _requant_kernel(acc, m, s, offset, zp, lo, hi, out):  # m, s [1 | T, 1 | N]: row i uses rule row i % T
    rows, n = acc.shape
    for i in prange(rows):
        mi, si = m[i % m.shape[0]], s[i % s.shape[0]]
        if mi.size == 1 and offset.size == 1:  # one loop per case: a per-element branch on the rule's
            for j in range(n):                 # size stops vectorisation (measured 7x on PPOQ's [T, N] rule)
                out[i, j] = requantize_offset_one(np.int64(acc[i, j]), mi[0], si[0], offset[0], lo - zp, hi - zp) + zp
        elif offset.size == 1:
            for j in range(n):
                out[i, j] = requantize_offset_one(np.int64(acc[i, j]), mi[j], si[j], offset[0], lo - zp, hi - zp) + zp
        else:
            for j in range(n):
                out[i, j] = _rule(acc[i, j], mi, si, offset, zp, lo, hi, j)


@numba.njit(cache=True, parallel=True)
def _add_kernel(a, ma, sa, oa, zpa, loa, hia, b, mb, sb, ob, zpb, lob, hib, limit, out):
    # the rules' m, s, offset arrive expanded to one entry per channel: no per-element branch
    rows, n = a.shape
    for i in prange(rows):
        for j in range(n):
            total = (requantize_offset_one(np.int64(a[i, j]), ma[j], sa[j], oa[j], loa - zpa, hia - zpa) + zpa
                     + requantize_offset_one(np.int64(b[i, j]), mb[j], sb[j], ob[j], lob - zpb, hib - zpb) + zpb)
            out[i, j] = min(max(total, -limit), limit)


def _requant(acc: np.ndarray, r: Requant) -> np.ndarray:
    out = np.empty(acc.shape, np.int32)
    m, s = (a.reshape(a.shape[0] if a.ndim == 2 else 1, -1) for a in (r.m, r.s))
    _requant_kernel(acc, m, s, r.offset, r.zero_point, r.lo, r.hi, out)
    return out


def _add(a: np.ndarray, ra: Requant, b: np.ndarray, rb: Requant) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"residual add of different shapes: {a.shape} vs {b.shape}")
    out = np.empty(a.shape, np.int32)
    n = a.shape[1]
    ma, sa, oa, mb, sb, ob = (np.ascontiguousarray(np.broadcast_to(x, (n,)))
                              for x in (ra.m, ra.s, ra.offset, rb.m, rb.s, rb.offset))
    _add_kernel(a, ma, sa, oa, ra.zero_point, ra.lo, ra.hi, b, mb, sb, ob, rb.zero_point, rb.lo, rb.hi,
                RESIDUAL_MAX, out)
    return out


@numba.njit(cache=True, parallel=True)
def _operand_kernel(codes, zp, out):  # codes, out [R, C]; row i subtracts zp[i % zp.size]
    rows, cols = codes.shape
    for i in prange(rows):
        z = zp[i % zp.size]
        for j in range(cols):
            out[i, j] = codes[i, j] - z


def _operand(codes: np.ndarray, zp: int | np.ndarray) -> np.ndarray:
    """codes - zp as int16 in one parallel pass: codes of at most 8 bits and zero-points in that range
    cannot wrap. zp: an int, or a per-row column [rows, 1] of a 2-D codes array."""
    zp = np.asarray(zp, np.int32).reshape(-1)
    if not 0 <= zp.min() <= zp.max() <= 255:
        raise ValueError("zero-point outside the 8-bit code range")
    if zp.size > 1 and (codes.ndim != 2 or zp.size != codes.shape[0]):
        raise ValueError(f"per-row zero-points need 2-D codes with one row each, got {codes.shape}, {zp.size}")
    rows = np.ascontiguousarray(codes).reshape(-1, codes.shape[-1])
    out = np.empty(rows.shape, np.int16)
    _operand_kernel(rows, zp, out)
    return out.reshape(codes.shape)


def _weight(g: Gemm) -> np.ndarray:
    w = _weights.get(g)
    if w is None:
        fits_int8 = g.weight.min() >= -128 and g.weight.max() <= 127
        w = np.ascontiguousarray(g.weight, dtype=np.int8 if fits_int8 else np.int16)
        _weights[g] = w
    return w


def _plain_input(codes: np.ndarray, g: Gemm) -> tuple[np.ndarray, np.ndarray]:
    """The codes as uint8 (the GEMM kernel reads them without a range pass) and the bias with the
    zero-point folded in: (codes - zp) @ W^T + b = codes @ W^T + (b - zp * rowsum(W)), exact."""
    folded = _folded_bias.get(g)
    if folded is None:
        folded = g.bias - int(g.operand.zero_point[0]) * g.weight.sum(axis=1, dtype=np.int64)
        _folded_bias[g] = folded
    if folded.size and (folded.min() < -(1 << 31) or folded.max() >= 1 << 31):  # not an int32 bias: subtract
        return _operand(codes, int(g.operand.zero_point[0])), g.bias
    return codes.astype(np.uint8, copy=False), folded


@numba.njit(cache=True, parallel=True)
def _gather_kernel(x, index, out):  # x [B, L, C], index [R, k] (-1: zeros), out [B, R, k * C]
    images, rows = out.shape[0], index.shape[0]
    channels = x.shape[2]
    for br in prange(images * rows):
        b, r = br // rows, br % rows
        for part in range(index.shape[1]):
            source, dst = index[r, part], out[b, r, part * channels:(part + 1) * channels]
            if source < 0:
                dst[:] = 0
            else:
                dst[:] = x[b, source]


def _gather(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`execute_reference.gather_rows` in one parallel pass (no padded copy of the input)."""
    if index.size and (index.max() >= x.shape[1] or index.min() < -1):
        raise ValueError(f"gather index outside the {x.shape[1]} input rows")
    out = np.empty((x.shape[0], index.shape[0], index.shape[1] * x.shape[2]), x.dtype)
    _gather_kernel(np.ascontiguousarray(x), index, out)
    return out


@numba.njit(cache=True, parallel=True)
def _score_kernel(scores, bias, mask, masked):
    # in place: scores [G, H, T, T] += bias [H, T, T] (none: [H, 0, 0]); mask [W, T, T] (none: [0, T, T])
    groups, heads = scores.shape[0], scores.shape[1]
    for gh in prange(groups * heads):
        g, h = gh // heads, gh % heads
        s = scores[g, h]
        if bias.shape[1] > 0:
            s += bias[h]
        if mask.shape[0] > 0:
            m = mask[g % mask.shape[0]]
            for i in range(s.shape[0]):
                for j in range(s.shape[1]):
                    if m[i, j]:
                        s[i, j] = masked


def _scores(scores: np.ndarray, heads: int, bias: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray:
    """`execute_reference.score_rows` in place on the int32 accumulators (the bound export proved keeps
    score + bias inside int32)."""
    t = scores.shape[-1]
    shaped = np.ascontiguousarray(scores, dtype=np.int32).reshape(-1, heads, t, t)
    if bias is not None or mask is not None:
        _score_kernel(shaped, np.zeros((heads, 0, 0), np.int32) if bias is None else bias.astype(np.int32, copy=False),
                      np.zeros((0, t, t), np.bool_) if mask is None else mask, -SOFTMAX_INPUT_MAX)
    return shaped.reshape(-1, t)


def _dense_requant(a: np.ndarray, w: np.ndarray, bias: np.ndarray, r: Requant) -> np.ndarray:
    return kernels.dense_requant(a, w, bias, r.m, r.s, r.zero_point, r.lo, r.hi)


def _narrow(x: np.ndarray) -> np.ndarray:
    """An integer array in the narrowest of int8 / int16 / int32 / int64 holding its values."""
    for dtype in (np.int8, np.int16, np.int32):
        if not x.size or (np.iinfo(dtype).min <= x.min() and x.max() <= np.iinfo(dtype).max):
            return np.ascontiguousarray(x, dtype=dtype)
    return np.ascontiguousarray(x, dtype=np.int64)


def _narrowed(owner: Gemm | Requant, make: Callable[[], tuple]) -> tuple:
    """Made once per exported layer: PPOQ's per token x channel constants (bias, rule m and s: [T, N] each,
    2.4 MB apiece in int64 on DeiT-S fc1) narrowed, so that the fused kernel reads 13 bytes per output
    instead of 28 (measured 8 % faster on fc1), and W^T."""
    narrowed = _narrowed_constants.get(owner)
    if narrowed is None:
        narrowed = _narrowed_constants[owner] = make()
    return narrowed


def _outlier_args(g: Gemm) -> tuple:
    """W, its transpose, the shift, the narrowed bias, saturation and W packed for the VNNI tile of a PPOQ layer
    (made once)."""
    bias, w_t, packed = _narrowed(g, lambda: (_narrow(np.atleast_2d(g.bias)), np.ascontiguousarray(_weight(g).T),
                                              kernels.pack_weights(_weight(g))))
    return _weight(g), w_t, g.operand.outlier_shift, bias, g.saturated, packed


def _outlier_sum(a: np.ndarray, g: Gemm, outliers: np.ndarray) -> np.ndarray:
    w, w_t, shift, bias, saturated, packed = _outlier_args(g)
    return kernels.outlier_sum(a, w, shift, outliers, bias, saturated, w_t, packed)


def _outlier_requant(a: np.ndarray, g: Gemm, outliers: np.ndarray, rules: list[tuple[int, int, Requant]]
                     ) -> list[np.ndarray]:
    if not g.saturated:  # the fused rule needs the int32 sum (export saturates every PPOQ sum)
        acc = _outlier_sum(a, g, outliers)
        return [_requant(np.ascontiguousarray(acc[:, start:stop]), r) for start, stop, r in rules]
    w, w_t, shift, bias, saturated, packed = _outlier_args(g)
    return kernels.outlier_requant(a, w, shift, outliers, bias, saturated,
                                   [(start, stop, *_narrowed(r, lambda: (_narrow(r.m), _narrow(r.s))), r.zero_point,
                                     r.lo, r.hi) for start, stop, r in rules], w_t, packed)


SIMULATOR_OPS = Ops(operand=_operand, weight=_weight, plain_input=_plain_input, dense=kernels.dense_gemm,
                    dense_requant=_dense_requant, log_shift=kernels.log_shift_gemm, outlier_sum=_outlier_sum,
                    outlier_requant=_outlier_requant,
                    requant=_requant, add=_add, layernorm=nonlinear.layernorm, layernorm_acc=nonlinear.layernorm_acc,
                    token_codes=nonlinear.token_codes, softmax=nonlinear.softmax, gelu=nonlinear.gelu,
                    gather=_gather, scores=_scores)


def run_simulator(program: IntegerProgram, images: np.ndarray | torch.Tensor
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`run_reference`'s logits and codes (same keys, same values), computed by the Numba kernels (torch's
    thread count left as it was: see `adfq_sim.threads`)."""
    with torch_threads_kept():
        return run_program(program, images, SIMULATOR_OPS, CHUNK)
