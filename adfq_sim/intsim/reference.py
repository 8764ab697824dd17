"""The integer GEMMs of the simulator, as a slow, obviously-correct int64 NumPy oracle.

This module fixes the semantics; `kernels` implements the same functions with Numba and int32
accumulators, and the tests hold the two equal. Results here are exact int64 values: a kernel can only
match them when `bounds` proved that every partial sum fits int32 (a layer that could overflow is
refused at export, never left to wrap).

Operands (all integer codes with their zero-points already subtracted):
  A [M, K] or [G, M, K] left operand (activations); W [N, K] shared weights, or [G, N, K] one right
  operand per group (Q.K^T, softmax.V over batch x heads); optional int32 bias [N].

Dense GEMM:        acc[m, n] = sum_k A[m, k] * W[n, k] + bias[n]

Log-shift GEMM (a log activation multiplies by shifting, never by a float). P holds log codes of
base 2**(1/R) (R = `formats.LOG_BASES[base]`: 1 for base 2, 2 for sqrt2), code q meaning
delta * 2**(-q/R) and the zero code (2**bits - 1) meaning zero; B [N, K] signed; E fraction bits, fixed
at export, keep the shifted-out bits. acc approximates sum_k value(P) * B in units of delta * 2**-E,
each term rounded down (zero codes contribute nothing). With q = R j + r (0 <= r < R):
  acc_r = sum over codes with remainder r of floor(B[n,k] * 2**E / 2**j)
  acc   = acc_0 + sum over r >= 1 of requantize(acc_r, *root_rules(R)[r]) + bias[n]
  (the dyadic rule of `dyadic.py`, round half up, applied once per accumulator: for base 2 acc = acc_0;
  for sqrt2 acc = acc_even + requantize(acc_odd, 1/sqrt2)).
  floor(b * 2**E / 2**j) is (b << E) >> j with an arithmetic shift; shift counts are capped at 63 here
  (31 in the int32 kernels), which changes nothing: past that the result is already 0 or -1.

Sparse outlier path (PPOQ): outliers are (row t, column c, int16 code o) on the
token's step / 2**shift; the dense A holds 0 there. With the dense products on the coarser step:
  acc = ((A @ W^T) << shift) + sum over outliers of o * W[n, c] (into row t) + bias[n]
The bias is added last, at the scale of the final accumulator (step * 2**-shift * weight scale).
The dense part is an int32 accumulator of its own (proven bound); the outlier part is summed in int64
(explicitly widened: any number of a row's elements may be outliers); the int64 total is saturated to
+-(2**31 - 1) (`saturate`), which export proves never changes the consumer's codes.

Twin-uniform operands (PTQ4ViT): codes of b bits, H = 2**(b-1), two uniform ranges with steps D2
(coarse) and D1 = D2 / 2**shift (fine). `twin_levels` splits the codes into two level operands:
  mode softmax: code c < H is the fine level c, c >= H the coarse level c - H;
  mode gelu:    the code read as a signed b-bit integer l: l >= 0 is a coarse level, l < 0 a fine one;
  acc = (coarse @ W^T << shift) + fine @ W^T + bias, each product an int32 accumulator, the sum in
  int64, saturated.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from adfq_sim.formats import LOG_BASES
from adfq_sim.intsim.dyadic import dyadic, requantize

SATURATION = (1 << 31) - 1  # a saturated accumulator is clamped to [-SATURATION, SATURATION]
_I16, _I32, _I64 = np.iinfo(np.int16), np.iinfo(np.int32), np.iinfo(np.int64)


def gemm_shapes(a: np.ndarray, w: np.ndarray) -> tuple[int, int, int, int]:
    """(G, M, N, K) of A [M, K] | [G, M, K] times W [N, K] (shared) | [G, N, K] (per group)."""
    if a.ndim not in (2, 3) or w.ndim not in (2, 3) or (w.ndim == 3 and a.ndim != 3):
        raise ValueError(f"operands must be A [(G,) M, K] and W [(G,) N, K], got {a.shape} and {w.shape}")
    if a.shape[-1] != w.shape[-1]:
        raise ValueError(f"inner dimensions differ: A {a.shape} vs W {w.shape}")
    if w.ndim == 3 and w.shape[0] != a.shape[0]:
        raise ValueError(f"group counts differ: A {a.shape} vs W {w.shape}")
    groups = a.shape[0] if a.ndim == 3 else 1
    return groups, a.shape[-2], w.shape[-2], a.shape[-1]


def check_bias(bias: np.ndarray | None, n: int) -> None:
    if bias is None:
        return
    if bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    if bias.size and (bias.min() < _I32.min or bias.max() > _I32.max):
        raise ValueError(f"bias values outside int32: [{bias.min()}, {bias.max()}]")


@lru_cache(maxsize=None)
def root_rules(roots: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) int64 [R]: entry r >= 1 is the dyadic rule of 2**(-r/R), the weight of log accumulator r
    (entry 0, the unshifted accumulator, is unused)."""
    rules = [(0, 0)] + [dyadic(2.0 ** (-r / roots)) for r in range(1, roots)]
    return np.array([m for m, _ in rules], np.int64), np.array([s for _, s in rules], np.int64)


def check_log_args(p: np.ndarray, e: int, base: str, zero_code: int) -> None:
    """The log-shift GEMM's arguments, but for the range of P's values (`check_log_codes`)."""
    if base not in LOG_BASES:
        raise ValueError(f"unknown log base {base!r}; expected one of {sorted(LOG_BASES)}")
    if not 0 <= e <= 31:
        raise ValueError(f"fraction bits E must be in 0..31, got {e}")
    if p.dtype.kind not in "iu" or not 1 <= zero_code <= 255:
        raise ValueError(f"log codes must be integers with a zero code in 1..255, got {p.dtype}, {zero_code}")


def check_log_codes(lo: int, hi: int, zero_code: int) -> None:
    """P's smallest and largest code must lie in 0 .. zero_code."""
    if lo < 0 or hi > zero_code:
        raise ValueError(f"log codes [{lo}, {hi}] outside 0 .. the zero code {zero_code}")


def check_outliers(rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, m: int, k: int) -> None:
    if not rows.shape == cols.shape == codes.shape or rows.ndim != 1:
        raise ValueError(f"outlier rows, cols, codes must be 1-D of one length, got "
                         f"{rows.shape}, {cols.shape}, {codes.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= m or cols.min() < 0 or cols.max() >= k):
        raise ValueError(f"outlier index out of range for an accumulator of {m} rows and {k} columns")
    if codes.size and (codes.min() < _I16.min or codes.max() > _I16.max):
        raise ValueError(f"outlier codes outside int16: [{codes.min()}, {codes.max()}]")


def _with_bias(acc: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    check_bias(bias, acc.shape[-1])
    return acc if bias is None else acc + bias.astype(np.int64)


def dense_gemm(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A @ W^T (+ bias) exactly, as int64 [(G,) M, N]."""
    gemm_shapes(a, w)
    return _with_bias(a.astype(np.int64) @ np.swapaxes(w.astype(np.int64), -1, -2), bias)


def log_shift_gemm(p: np.ndarray, b: np.ndarray, e: int, base: str, zero_code: int,
                   bias: np.ndarray | None = None) -> np.ndarray:
    """P (log codes) times B^T by shifts, exactly, as int64 [(G,) M, N]; see the module docstring."""
    groups, m, n, _ = gemm_shapes(p, b)
    check_log_args(p, e, base, zero_code)
    if p.size:
        check_log_codes(int(p.min()), int(p.max()), zero_code)
    p3, b3 = p.reshape(groups, m, -1), b.reshape(-1, n, b.shape[-1])
    roots = LOG_BASES[base]
    rule_m, rule_s = root_rules(roots)
    acc = np.zeros((groups, m, n), dtype=np.int64)
    for g in range(groups):
        scaled = b3[g if b3.shape[0] > 1 else 0].astype(np.int64) << e  # [N, K]
        for i in range(m):
            q = p3[g, i].astype(np.int64)
            live = q != zero_code
            terms = np.right_shift(scaled, np.minimum(q // roots, 63))
            acc[g, i] = (terms * (live & (q % roots == 0))).sum(axis=1)
            for r in range(1, roots):
                part = (terms * (live & (q % roots == r))).sum(axis=1)
                acc[g, i] += requantize(part, rule_m[r], rule_s[r], _I64.min, _I64.max)
    return _with_bias(acc.reshape(*p.shape[:-1], n), bias)


def outlier_gemm(rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
    """The sparse products alone: int64 [m, N] with row t holding sum of o * W[:, c] over its outliers."""
    check_outliers(rows, cols, codes, m, w.shape[1])
    acc = np.zeros((m, w.shape[0]), dtype=np.int64)
    np.add.at(acc, rows.astype(np.int64), codes.astype(np.int64)[:, None] * w[:, cols].T.astype(np.int64))
    return acc


def saturate(acc: np.ndarray) -> np.ndarray:
    """The int64 sum of an accumulator's parts, clamped to [-SATURATION, SATURATION]."""
    return np.clip(np.asarray(acc, np.int64), -SATURATION, SATURATION)


def twin_levels(codes: np.ndarray, mode: str, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(coarse, fine) int64 level operands of twin-uniform codes; the other range holds 0."""
    c = np.asarray(codes, np.int64)
    if mode == "softmax":
        return np.where(c >= half, c - half, 0), np.where(c < half, c, 0)
    if mode == "gelu":
        level = np.where(c < half, c, c - 2 * half)
        return np.maximum(level, 0), np.minimum(level, 0)
    raise ValueError(f"unknown twin-uniform mode {mode!r}")
