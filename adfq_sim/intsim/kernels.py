"""The integer GEMMs of the simulator as parallel Numba kernels with int32 accumulators.

Same functions, same semantics as `reference` (read its docstring for the rules); results are int32.
Accumulation is int32 everywhere, which is what makes the loops vectorise (vpmaddwd on AVX-512):
callers must have proven the layer's bound with `bounds.check_int32` first (export does, per layer).
An unchecked overflow wraps here and differs from the int64 reference, which is how tests would see it.

Storage: int8 and int16 operands are taken as they are, other integer dtypes are narrowed to int16
(their values must fit). Store A as int16 (codes minus a zero-point need 9 bits at 8-bit) and W as
int8 when its codes fit: measured interleaved on the DeiT-S shapes (`benchmarks/gemm_speed.py`),
int16 x int8 runs as fast as int16 x int16 (within 5%, at half the weight bytes), and 15-25% faster
than int8 x int8, whose two sign extensions per step cost more than the halved loads save.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from adfq_sim.intsim.dyadic import requantize_one
from adfq_sim.intsim.reference import (INV_SQRT2, check_bias, check_log_args, check_outlier_gemm, check_outliers,
                                       gemm_shapes)

ROW_BLOCK = 8  # rows of A sharing each row of W while it is hot in L1
_I64_MIN, _I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _codes(x: np.ndarray) -> np.ndarray:
    """A C-contiguous int8/int16 array with the values of x (a kernel operand)."""
    if x.dtype not in (np.int8, np.int16):
        if x.size and (x.min() < -(1 << 15) or x.max() >= 1 << 15):
            raise ValueError(f"GEMM operand values outside int16: [{x.min()}, {x.max()}]")
        x = x.astype(np.int16)
    return np.ascontiguousarray(x)


def _bias(bias: np.ndarray | None, n: int) -> np.ndarray:
    check_bias(bias, n)
    return np.zeros(n, np.int32) if bias is None else np.ascontiguousarray(bias, dtype=np.int32)


@numba.njit(cache=True, inline="always")
def _dot(x, y):
    # Numba widens the sum to int64; truncating it to int32 (exact under a proven bound) lets LLVM
    # narrow the whole loop back to int32 multiply-adds (vpmaddwd).
    acc = 0
    for k in range(x.shape[0]):
        acc += np.int32(x[k]) * np.int32(y[k])
    return np.int32(acc)


@numba.njit(cache=True, parallel=True)
def _dense_kernel(a, w, bias, out):  # a [G, M, K], w [1 | G, N, K], out [G, M, N]
    groups, m, _ = a.shape
    n = w.shape[1]
    blocks = (m + ROW_BLOCK - 1) // ROW_BLOCK
    for gb in prange(groups * blocks):
        g, i0 = gb // blocks, (gb % blocks) * ROW_BLOCK
        ag, wg, og = a[g], w[g if w.shape[0] > 1 else 0], out[g]
        for j in range(n):
            wj = wg[j]
            for i in range(i0, min(m, i0 + ROW_BLOCK)):
                og[i, j] = _dot(ag[i], wj) + bias[j]


def dense_gemm(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A @ W^T (+ bias) as int32 [(G,) M, N]; A [(G,) M, K], W [N, K] or [G, N, K]."""
    groups, m, n, k = gemm_shapes(a, w)
    out = np.empty((groups, m, n), np.int32)
    _dense_kernel(_codes(a).reshape(groups, m, k), _codes(w).reshape(-1, n, k), _bias(bias, n), out)
    return out.reshape(*a.shape[:-1], n)


@numba.njit(cache=True, inline="always")
def _shift_sum(row, shift, mask):
    # The sum of (B << E) >> shift over the lanes in mask (-1 or 0). `& 31` (a no-op: shifts are
    # capped at 31) and the int32 casts let LLVM use 16-lane int32 shifts instead of Numba's int64 ones.
    acc = 0
    for c in range(row.shape[0]):
        acc += np.int32(row[c] >> (shift[c] & 31)) & mask[c]
    return np.int32(acc)


@numba.njit(cache=True, inline="always")
def _shift_sums(row, shift, even, odd):
    # `_shift_sum` over the even and the odd lanes in one pass (faster than two).
    acc_even = 0
    acc_odd = 0
    for c in range(row.shape[0]):
        term = np.int32(row[c] >> (shift[c] & 31))
        acc_even += term & even[c]
        acc_odd += term & odd[c]
    return np.int32(acc_even), np.int32(acc_odd)


@numba.njit(cache=True, parallel=True)
def _log_shift_kernel(p, scaled, sqrt2, zero_code, m_inv, s_inv, bias, out):
    # p [G, M, K] uint8 codes, scaled [1 | G, N, K] int32 = B << E, out [G, M, N]
    groups, m, k = p.shape
    n = scaled.shape[1]
    for gi in prange(groups * m):
        g, i = gi // m, gi % m
        sg, og = scaled[g if scaled.shape[0] > 1 else 0], out[g]
        shift = np.empty(k, np.int32)  # per column of this row: the right shift and the lane masks
        even = np.empty(k, np.int32)  # base 2: every live (non-zero) code
        odd = np.empty(k, np.int32)
        for c in range(k):
            q = np.int32(p[g, i, c])
            live = np.int32(-1) if q != zero_code else np.int32(0)
            shift[c] = min(q >> 1 if sqrt2 else q, 31)
            even[c] = live & ((q & 1) - 1) if sqrt2 else live
            odd[c] = live & -(q & 1)
        for j in range(n):
            if sqrt2:
                acc_even, acc_odd = _shift_sums(sg[j], shift, even, odd)
                og[i, j] = (np.int64(acc_even) + bias[j]
                            + requantize_one(np.int64(acc_odd), m_inv, s_inv, _I64_MIN, _I64_MAX))
            else:  # base 2: one accumulator, twice as fast
                og[i, j] = np.int64(_shift_sum(sg[j], shift, even)) + bias[j]


def log_shift_gemm(p: np.ndarray, b: np.ndarray, e: int, base: str, zero_code: int,
                   bias: np.ndarray | None = None) -> np.ndarray:
    """P (uint8 log codes) times B^T by shifts, as int32 [(G,) M, N]; see `reference.log_shift_gemm`."""
    groups, m, n, k = gemm_shapes(p, b)
    check_log_args(p, e, base, zero_code)
    scaled = _codes(b).astype(np.int32).reshape(-1, n, k) << e
    out = np.empty((groups, m, n), np.int32)
    _log_shift_kernel(np.ascontiguousarray(p).reshape(groups, m, k), scaled, base == "sqrt2", zero_code,
                      *INV_SQRT2, _bias(bias, n), out)
    return out.reshape(*p.shape[:-1], n)


@numba.njit(cache=True, parallel=True)
def _outlier_kernel(acc, starts, rows, cols, codes, w_t):
    # outliers sorted by row; segment r = [starts[r], starts[r + 1]) all land in row rows[starts[r]];
    # w_t = W^T [K, N], so each outlier adds a contiguous row (an axpy that vectorises)
    n = w_t.shape[1]
    for r in prange(starts.shape[0] - 1):
        target = acc[rows[starts[r]]]
        for o in range(starts[r], starts[r + 1]):
            code, column = np.int32(codes[o]), w_t[cols[o]]
            for j in range(n):
                target[j] += code * np.int32(column[j])


def add_outliers(acc: np.ndarray, rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, w: np.ndarray) -> None:
    """acc[t, :] += o * W[:, c] for every outlier (t, c, o), in place; acc int32 [M, N], W [N, K]."""
    if acc.dtype != np.int32 or acc.ndim != 2 or w.ndim != 2 or acc.shape[1] != w.shape[0]:
        raise ValueError(f"need an int32 accumulator [M, N] and W [N, K], got {acc.dtype} {acc.shape}, {w.shape}")
    if not acc.flags.c_contiguous:
        raise ValueError("the accumulator must be C-contiguous (it is updated in place)")
    check_outliers(rows, cols, codes, acc.shape[0], w.shape[1])
    if rows.size == 0:
        return
    order = np.argsort(rows, kind="stable")
    rows, cols, codes = rows[order].astype(np.int32), cols[order].astype(np.int32), codes[order].astype(np.int16)
    starts = np.flatnonzero(np.diff(rows, prepend=-1, append=-1)).astype(np.int64)
    _outlier_kernel(acc, starts, rows, cols, codes, np.ascontiguousarray(_codes(w).T))


def dense_with_outliers(a: np.ndarray, w: np.ndarray, rows: np.ndarray, cols: np.ndarray, codes: np.ndarray,
                        shift: int, bias: np.ndarray | None = None) -> np.ndarray:
    """((A @ W^T) << shift) + sparse outlier products + bias as int32 [M, N] (A, W 2-D)."""
    check_outlier_gemm(a, w, shift)
    acc = dense_gemm(a, w)
    acc <<= shift  # a separate pass: a variable shift inside the dot-product loop stops its vectorisation
    add_outliers(acc, rows, cols, codes, w)
    if bias is not None:
        acc += _bias(bias, acc.shape[1])
    return acc
