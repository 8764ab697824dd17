"""Numba kernels of the integer non-linear ops: the semantics of `nonlinear_reference` (the spec,
which also holds the export constants), one row per parallel iteration, int64 arithmetic throughout.
Input-range checks are the reference's own (`check_codes`), run before each kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from adfq_sim.intsim.dyadic import requantize_one
from adfq_sim.intsim.nonlinear_reference import (
    EXP_C1,
    EXP_C2,
    EXP_FRAC_BITS,
    EXP_MAX_Z,
    EXP_ONE_BITS,
    SOFTMAX_INPUT_MAX,
    SUM_RECIP_BITS,
    GeluConstants,
    LayerNormConstants,
    LogOutput,
    SoftmaxConstants,
    check_codes,
)


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


# ------------------------------------------------------------------------------------------ LayerNorm


@numba.njit(cache=True, parallel=True)
def _layernorm_kernel(x, eps_int, frac_bits, recip_bits, norm_max, gamma, beta, m, s, zp, qmax, threshold,
                      want_acc, acc_out, codes_out):
    rows, c = x.shape
    tokens = m.size
    for r in numba.prange(rows):
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
        t = r % tokens
        for j in range(c):
            n = ((c * np.int64(x[r, j]) - total) * recip + half) >> shift
            n = min(max(n, -norm_max), norm_max)
            acc = n * gamma[j] + beta[j]
            if want_acc:
                acc_out[r, j] = acc
            elif threshold >= 0 and abs(acc) > threshold:
                codes_out[r, j] = zp[t]
            else:
                codes_out[r, j] = _uniform_code(acc, m[t], s[t], zp[t], qmax)


def _layernorm_run(x: np.ndarray, c: LayerNormConstants, want_acc: bool) -> tuple[np.ndarray, np.ndarray]:
    check_codes(x, c.input_max, "layernorm")
    if x.shape[1] != c.channels:
        raise ValueError(f"layernorm exported for {c.channels} channels, got {x.shape[1]}")
    x = np.ascontiguousarray(x)
    acc = np.empty(x.shape if want_acc else (0, 0), np.int64)
    codes = np.empty((0, 0) if want_acc else x.shape, np.int32)
    o = c.out
    _layernorm_kernel(x, c.eps_int, c.frac_bits, c.recip_bits, c.norm_max, c.gamma, c.beta, o.m, o.s,
                      o.zero_point, o.qmax, c.outlier_threshold, want_acc, acc, codes)
    return acc, codes


def layernorm_acc(x: np.ndarray, c: LayerNormConstants) -> np.ndarray:
    """int64 [M, C]: the LayerNorm output with frac_bits + gamma_bits fractional bits (PPOQ's outlier path)."""
    return _layernorm_run(x, c, True)[0]


def layernorm(x: np.ndarray, c: LayerNormConstants) -> np.ndarray:
    """int32 [M, C] codes of the next uniform / PPOQ quantizer; outliers hold the zero-point."""
    return _layernorm_run(x, c, False)[1]


# -------------------------------------------------------------------------------------------- softmax


@numba.njit(cache=True, parallel=True)
def _softmax_kernel(x, a_max, m, s, log_out, um, us, uzp, qmax, thresholds, zero_below, zero_code, out):
    rows, n = x.shape
    u_max = np.int64(EXP_MAX_Z) << EXP_FRAC_BITS
    frac_mask = (np.int64(1) << EXP_FRAC_BITS) - 1
    half = np.int64(1) << (EXP_FRAC_BITS - 1)
    one = np.int64(1) << EXP_ONE_BITS
    for r in numba.prange(rows):
        e = np.empty(n, np.int64)
        top = np.int64(x[r, 0])
        for j in range(1, n):
            top = max(top, np.int64(x[r, j]))
        total = np.int64(0)
        for j in range(n):
            u = requantize_one(min(top - np.int64(x[r, j]), a_max), m, s, np.int64(0), u_max)
            z = u >> EXP_FRAC_BITS
            f = u & frac_mask
            t = ((EXP_C2 * f + half) >> EXP_FRAC_BITS) - EXP_C1
            p = one + ((t * f + half) >> EXP_FRAC_BITS)
            e[j] = ((p << 1) + (np.int64(1) << z)) >> (z + 1)
            total += e[j]
        recip = (np.int64(1) << SUM_RECIP_BITS) // total
        for j in range(n):
            p = (e[j] * recip + (np.int64(1) << 30)) >> 31
            if log_out:
                out[r, j] = _log_code(p, thresholds, zero_below, zero_code)
            else:
                out[r, j] = _uniform_code(p, um, us, uzp, qmax)


def softmax(x: np.ndarray, c: SoftmaxConstants) -> np.ndarray:
    """int32 [M, N] codes (uniform per tensor or log) of the row-wise softmax of int32 scores."""
    check_codes(x, SOFTMAX_INPUT_MAX, "softmax")
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, np.int32)
    o = c.out
    if isinstance(o, LogOutput):
        _softmax_kernel(x, c.a_max, c.m, c.s, True, 0, 1, 0, 0, o.thresholds, o.zero_below, o.zero_code, out)
    else:
        _softmax_kernel(x, c.a_max, c.m, c.s, False, o.m[0], o.s[0], o.zero_point[0], o.qmax,
                        np.zeros(0, np.int64), 0, 0, out)
    return out


# ----------------------------------------------------------------------------------------------- GELU


@numba.njit(cache=True, parallel=True)
def _gelu_kernel(acc, thresholds, codes, out):
    for i in numba.prange(acc.size):
        v = np.int64(acc[i])
        lo, hi = 0, thresholds.size  # count thresholds <= v (ascending): binary search
        while lo < hi:
            mid = (lo + hi) >> 1
            if thresholds[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = codes[lo]


def gelu(acc: np.ndarray, c: GeluConstants) -> np.ndarray:
    """int32 codes (the shape of acc) of GELU on int32 accumulators, by the exported breakpoints."""
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"gelu takes int32 accumulators, got {acc.dtype}")
    flat = np.ascontiguousarray(acc).ravel()
    out = np.empty(flat.shape, np.int32)
    _gelu_kernel(flat, c.thresholds, c.codes, out)
    return out.reshape(acc.shape)
