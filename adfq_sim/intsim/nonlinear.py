"""Numba kernels of the integer non-linear ops: the semantics of `nonlinear_reference` (the spec,
which also holds the export constants), rows (blocks of rows for softmax) per parallel iteration, int64
arithmetic throughout.
Input-range checks are the reference's own (`check_codes`), run before each kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from adfq_sim.intsim.dyadic import requantize_one
from adfq_sim.intsim.nonlinear_reference import (
    EXP_FRAC_BITS,
    EXP_LO_BITS,
    EXP_MAX_Z,
    EXP_ONE_BITS,
    SOFTMAX_INPUT_MAX,
    EXP_TABLE_HI,
    EXP_TABLE_LO,
    SUM_RECIP_BITS,
    GeluConstants,
    LayerNormConstants,
    LogOutput,
    SoftmaxConstants,
    StepOutput,
    TokenCodes,
    check_codes,
)
from adfq_sim.formats import OUTLIER_MAX, OUTLIER_MIN


@numba.njit(cache=True, inline="always")
def isqrt_one(n: np.int64) -> np.int64:
    """floor(sqrt(n)) for 0 <= n < 2**63, digit by digit (exact, no overflow: res + bit < 2**63)."""
    res = np.int64(0)
    bit = np.int64(1) << 62
    while bit > n:
        bit >>= 2
    while bit != 0:
        if n >= res + bit:
            n -= res + bit
            res = (res >> 1) + bit
        else:
            res >>= 1
        bit >>= 2
    return res


@numba.njit(cache=True)
def _isqrt_array(n: np.ndarray) -> np.ndarray:
    out = np.empty_like(n)
    for i in range(n.size):
        out[i] = isqrt_one(n[i])
    return out


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) element-wise for int64 n >= 0 (the kernel's own square root, exposed for tests)."""
    n = np.ascontiguousarray(n, dtype=np.int64)
    if (n < 0).any():
        raise ValueError("isqrt of a negative number")
    return _isqrt_array(n.ravel()).reshape(n.shape)


@numba.njit(cache=True, inline="always")
def _bit_length(v: np.int64) -> np.int64:
    b = np.int64(0)
    while v > 0:
        v >>= 1
        b += 1
    return b


@numba.njit(cache=True, inline="always")
def _uniform_code(acc: np.int64, m: np.int64, s: np.int64, zp: np.int64, qmax: np.int64) -> np.int64:
    return requantize_one(acc, m, s, -zp, qmax - zp) + zp


@numba.njit(cache=True, inline="always")
def _log_code(v: np.int64, thresholds: np.ndarray, zero_below: np.int64, zero_code: np.int64) -> np.int64:
    """#{k : v <= thresholds[k]} by binary search over the descending thresholds."""
    if v < zero_below:
        return zero_code
    lo, hi = 0, thresholds.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if thresholds[mid] >= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, inline="always")
def _count_at_or_below(v: np.int64, thresholds: np.ndarray) -> np.int64:
    """#{k : thresholds[k] <= v} by binary search over the ascending thresholds (a step table's index)."""
    lo, hi = 0, thresholds.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if thresholds[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


# ------------------------------------------------------------------------------------------ LayerNorm


LAYERNORM_ROW_BLOCK = 16  # rows per parallel iteration, sharing one acc buffer


@numba.njit(cache=True, inline="always")
def _codes_row(acc, m, s, zp, qmax, threshold, om, os, codes, outliers):
    """codes (and, with PPOQ, outliers) of one row of acc values by the row's rules; one loop per case,
    so that the common one (no outliers) vectorises."""
    if threshold < 0:
        for j in range(acc.size):
            codes[j] = _uniform_code(acc[j], m, s, zp, qmax)
        return
    for j in range(acc.size):
        if abs(acc[j]) > threshold:
            codes[j] = zp
            outliers[j] = requantize_one(acc[j], om, os, OUTLIER_MIN, OUTLIER_MAX)
        else:
            codes[j] = _uniform_code(acc[j], m, s, zp, qmax)
            outliers[j] = 0


@numba.njit(cache=True, parallel=True)
def _layernorm_kernel(x, eps_int, frac_bits, recip_bits, norm_max, gamma, beta, acc_shift, m, s, zp, qmax,
                      threshold, om, os, want_acc, acc_out, codes_out, outliers_out):
    # row r takes the output rule of token r % T; outliers_out is written only with PPOQ (threshold >= 0)
    rows, c = x.shape
    for block in numba.prange((rows + LAYERNORM_ROW_BLOCK - 1) // LAYERNORM_ROW_BLOCK):
        acc = np.empty(c, np.int64)
        for r in range(block * LAYERNORM_ROW_BLOCK, min(rows, (block + 1) * LAYERNORM_ROW_BLOCK)):
            total = np.int64(0)
            squares = np.int64(0)
            for j in range(c):
                v = np.int64(x[r, j])
                total += v
                squares += v * v
            var = c * squares - total * total + eps_int
            k = max(np.int64(0), (62 - _bit_length(var)) // 2)
            recip = (np.int64(1) << recip_bits) // max(isqrt_one(var << (2 * k)), np.int64(1))
            shift = recip_bits - frac_bits - k
            half = np.int64(1) << (shift - 1)
            for j in range(c):
                n = ((c * np.int64(x[r, j]) - total) * recip + half) >> shift
                n = min(max(n, -norm_max), norm_max)
                acc[j] = n * gamma[j] + beta[j]
            if acc_shift > 0:
                for j in range(c):
                    acc[j] = (acc[j] + (np.int64(1) << (acc_shift - 1))) >> acc_shift
            if want_acc:
                acc_out[r] = acc
            else:
                t = r % m.size
                _codes_row(acc, m[t], s[t], zp[t], qmax, threshold, om[r % om.size], os[r % os.size], codes_out[r],
                           outliers_out[r % outliers_out.shape[0]])


@numba.njit(cache=True, parallel=True)
def _token_codes_kernel(acc, m, s, zp, qmax, threshold, om, os, codes_out, outliers_out):
    rows, c = acc.shape
    for block in numba.prange((rows + LAYERNORM_ROW_BLOCK - 1) // LAYERNORM_ROW_BLOCK):
        row = np.empty(c, np.int64)
        for r in range(block * LAYERNORM_ROW_BLOCK, min(rows, (block + 1) * LAYERNORM_ROW_BLOCK)):
            row[:] = acc[r]
            t = r % m.size
            _codes_row(row, m[t], s[t], zp[t], qmax, threshold, om[r % om.size], os[r % os.size], codes_out[r],
                       outliers_out[r % outliers_out.shape[0]])


def _codes_args(t: TokenCodes | None) -> tuple:
    """The kernels' output-rule arguments of t (placeholders for an acc output)."""
    if t is None:
        one = np.ones(1, np.int64)
        return one, one, np.zeros(1, np.int64), 0, -1, one, one
    om, os = (t.outlier_m, t.outlier_s) if t.has_outliers else (np.ones(1, np.int64), np.ones(1, np.int64))
    return t.out.m, t.out.s, t.out.zero_point, t.out.qmax, t.outlier_threshold, om, os


def _outputs(shape: tuple[int, int], t: TokenCodes) -> tuple[np.ndarray, np.ndarray]:
    """codes, and PPOQ's outlier matrix (a placeholder row without outliers)."""
    return np.empty(shape, np.int32), np.empty(shape if t.has_outliers else (1, shape[1]), np.int32)


def _layernorm_run(x: np.ndarray, c: LayerNormConstants, t: TokenCodes | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    check_codes(x, c.input_max, "layernorm")
    if x.shape[1] != c.channels:
        raise ValueError(f"layernorm exported for {c.channels} channels, got {x.shape[1]}")
    x = np.ascontiguousarray(x)
    acc = np.empty(x.shape if t is None else (0, 0), np.int32)
    codes, outliers = (np.empty((1, 1), np.int32),) * 2 if t is None else _outputs(x.shape, t)
    _layernorm_kernel(x, c.eps_int, c.frac_bits, c.recip_bits, c.norm_max, c.gamma, c.beta, c.acc_shift,
                      *_codes_args(t), t is None, acc, codes, outliers)
    return acc, codes, outliers


def layernorm_acc(x: np.ndarray, c: LayerNormConstants) -> np.ndarray:
    """int32 [M, C]: the LayerNorm output with acc_frac fractional bits (`nonlinear_reference.layernorm_acc`)."""
    return _layernorm_run(x, c, None)[0]


def layernorm(x: np.ndarray, c: LayerNormConstants, t: TokenCodes) -> tuple[np.ndarray, np.ndarray | None]:
    """`nonlinear_reference.layernorm`, fused: int32 [M, C] codes (outliers at the zero-point) and, with
    PPOQ, the int16 outlier codes as an int32 [M, C] matrix (0 elsewhere), else None."""
    _, codes, outliers = _layernorm_run(x, c, t)
    return codes, outliers if t.has_outliers else None


def token_codes(acc: np.ndarray, t: TokenCodes) -> tuple[np.ndarray, np.ndarray | None]:
    """`nonlinear_reference.token_codes` of int32 acc rows [M, C]."""
    check_codes(acc, (1 << 31) - 1, "token codes")
    codes, outliers = _outputs(acc.shape, t)
    _token_codes_kernel(np.ascontiguousarray(acc), *_codes_args(t), codes, outliers)
    return codes, outliers if t.has_outliers else None


# -------------------------------------------------------------------------------------------- softmax

_UNIFORM, _LOG, _STEP = 0, 1, 2  # softmax output kinds
SOFTMAX_ROW_BLOCK = 16  # rows per parallel iteration


@numba.njit(cache=True, parallel=True)
def _softmax_kernel(x, a_max, m, s, mode, um, us, uzp, qmax, thresholds, zero_below, zero_code, step_codes, out):
    # mode: UNIFORM, LOG (descending thresholds) or STEP (ascending thresholds, a code table)
    rows, n = x.shape
    u_max = np.int64(EXP_MAX_Z) << EXP_FRAC_BITS
    frac_mask = (np.int64(1) << EXP_FRAC_BITS) - 1
    half = np.int64(1) << (EXP_ONE_BITS - 1)
    lo_mask = (np.int64(1) << EXP_LO_BITS) - 1
    for block in numba.prange((rows + SOFTMAX_ROW_BLOCK - 1) // SOFTMAX_ROW_BLOCK):
        e = np.empty(n, np.int64)  # once per block of rows: an allocation per row cost as much as the row
        for r in range(block * SOFTMAX_ROW_BLOCK, min(rows, (block + 1) * SOFTMAX_ROW_BLOCK)):
            xr, orow = x[r], out[r]
            top = np.int64(xr[0])
            for j in range(1, n):
                top = max(top, np.int64(xr[j]))
            total = np.int64(0)
            for j in range(n):
                u = requantize_one(min(top - np.int64(xr[j]), a_max), m, s, np.int64(0), u_max)
                z = u >> EXP_FRAC_BITS
                f = u & frac_mask
                p = (EXP_TABLE_HI[f >> EXP_LO_BITS] * EXP_TABLE_LO[f & lo_mask] + half) >> EXP_ONE_BITS
                e[j] = ((p << 1) + (np.int64(1) << z)) >> (z + 1)
                total += e[j]
            recip = (np.int64(1) << SUM_RECIP_BITS) // total
            for j in range(n):  # probabilities, in place
                e[j] = (e[j] * recip + (np.int64(1) << 30)) >> 31
            if mode == _UNIFORM:  # one loop per kind: a branch inside stopped the uniform one vectorising
                for j in range(n):
                    orow[j] = _uniform_code(e[j], um, us, uzp, qmax)
            elif mode == _LOG:
                for j in range(n):
                    orow[j] = _log_code(e[j], thresholds, zero_below, zero_code)
            else:
                for j in range(n):
                    orow[j] = step_codes[_count_at_or_below(e[j], thresholds)]


def softmax(x: np.ndarray, c: SoftmaxConstants) -> np.ndarray:
    """int32 [M, N] codes (uniform per tensor or log) of the row-wise softmax of int32 scores."""
    check_codes(x, SOFTMAX_INPUT_MAX, "softmax")
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, np.int32)
    o = c.out
    no_table = np.zeros(0, np.int32)
    if isinstance(o, LogOutput):
        _softmax_kernel(x, c.a_max, c.m, c.s, _LOG, 0, 1, 0, 0, o.thresholds, o.zero_below, o.zero_code, no_table,
                        out)
    elif isinstance(o, StepOutput):
        _softmax_kernel(x, c.a_max, c.m, c.s, _STEP, 0, 1, 0, 0, o.thresholds, 0, 0, o.codes, out)
    else:
        _softmax_kernel(x, c.a_max, c.m, c.s, _UNIFORM, o.m[0], o.s[0], o.zero_point[0], o.qmax,
                        np.zeros(0, np.int64), 0, 0, no_table, out)
    return out


# ----------------------------------------------------------------------------------------------- GELU


GELU_TABLE_MAX = 1 << 20  # thresholds spanning at most this many accumulators: a code table (4 MiB int32)


@numba.njit(cache=True, parallel=True)
def _gelu_kernel(acc, thresholds, codes, out):
    for i in numba.prange(acc.size):
        out[i] = codes[_count_at_or_below(np.int64(acc[i]), thresholds)]


@numba.njit(cache=True, parallel=True)
def _gelu_table_kernel(acc, lo, hi, table, out):
    # one gather per accumulator (vectorised): measured 20x the binary search (mispredicted branches) on fc1
    for i in numba.prange(acc.size):
        out[i] = table[min(max(acc[i], lo), hi) - lo]


def gelu(acc: np.ndarray, c: GeluConstants) -> np.ndarray:
    """int32 codes (the shape of acc) of GELU on int32 accumulators, by the exported breakpoints."""
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"gelu takes int32 accumulators, got {acc.dtype}")
    flat = np.ascontiguousarray(acc).ravel()
    out = np.empty(flat.shape, np.int32)
    t = c.thresholds
    i32 = np.iinfo(np.int32)
    if t.size and i32.min < t[0] and t[-1] <= i32.max and t[-1] - t[0] < GELU_TABLE_MAX:
        # the code of every accumulator in [t[0] - 1, t[-1]] (the rest clamps there): code k over [t[k-1], t[k])
        table = np.repeat(c.codes.astype(np.int32), np.diff(t, prepend=t[0] - 1, append=t[-1] + 1))
        _gelu_table_kernel(flat, np.int32(t[0] - 1), np.int32(t[-1]), table, out)
    else:
        _gelu_kernel(flat, t, c.codes, out)
    return out.reshape(acc.shape)
