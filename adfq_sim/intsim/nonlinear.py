"""Numba kernels of the integer non-linear ops: the semantics of `nonlinear_reference` (the spec,
which also holds the export constants), rows (blocks of rows for softmax) per parallel iteration, int64
arithmetic but where the values provably fit int32 (softmax's Q30 exponentials and probabilities); what
depends only on the exported constants is tabled once per op (softmax's exp of every gap, GELU's codes).
Input-range checks are the reference's own (`check_codes`), run before each kernel; softmax checks its
range on the kernel's pass for the row maximum (saves a min / max pass, 0.16 ms per DeiT-S layer).
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

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
    check_code_shape,
    check_codes,
    gap_exponentials,
    outside_range,
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
def _log_code(v, ascending, first, steps, zero_below, zero_code):
    """#{k : v <= thresholds[k]} for v >= 0 as n - #{a < v} over the thresholds sorted ascending: the count
    below v's octave, then `steps` branch-free compares inside it (`_octaves`; vectorises, where the binary
    search it replaced mispredicted)."""
    k = first[64 - leading_zeros(v)]
    for _ in range(steps):
        k += ascending[k] < v
    return zero_code if v < zero_below else ascending.size - steps - 1 - k


def _octaves(thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """`_log_code`'s tables: the thresholds ascending (padded so that `steps` compares stay inside); per
    octave of v, [2**(b-1), 2**b - 1] for bit length b (b = 0: v = 0), the count of thresholds below it; and
    `steps`, the most thresholds inside one octave below its last value."""
    ascending = np.sort(np.asarray(thresholds, np.int64))
    last = np.array([(1 << b) - 1 for b in range(64)], np.int64)
    first = np.searchsorted(ascending, np.concatenate([[0], last[:-1] + 1]), side="left").astype(np.int64)
    steps = int((np.searchsorted(ascending, last, side="left") - first).max())
    return np.concatenate([ascending, np.full(steps + 1, np.iinfo(np.int64).max)]), first, steps


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
LOG_COUNT_MAX = 16  # log outputs with at most this many thresholds compare each value with all of them
SOFTMAX_ROW_BLOCK = 16  # rows per parallel iteration
SOFTMAX_TABLE_GAPS = 1 << 16  # a_max below this: exp of every gap from a table (256 KiB of int32 at most; DeiT-S
# has a_max ~ 7,000: 27 KiB, in L1), one gather per score instead of the rule's product and two table reads
_exp_tables: WeakKeyDictionary[SoftmaxConstants, np.ndarray] = WeakKeyDictionary()  # made once per exported softmax


@numba.njit(cache=True, inline="always")
def _exponential(d, a_max, m, s):
    # `nonlinear_reference.gap_exponentials` of one gap d >= 0 (Q30, fits int32)
    u = requantize_one(min(d, a_max), m, s, np.int64(0), np.int64(EXP_MAX_Z) << EXP_FRAC_BITS)
    z = u >> EXP_FRAC_BITS
    f = u & ((np.int64(1) << EXP_FRAC_BITS) - 1)
    p = (EXP_TABLE_HI[f >> EXP_LO_BITS] * EXP_TABLE_LO[f & ((np.int64(1) << EXP_LO_BITS) - 1)]
         + (np.int64(1) << (EXP_ONE_BITS - 1))) >> EXP_ONE_BITS
    return np.int32(((p << 1) + (np.int64(1) << z)) >> (z + 1))


@numba.njit(cache=True, parallel=True)
def _softmax_kernel(x, a_max, m, s, exp_table, mode, um, us, uzp, qmax, thresholds, first, steps, zero_below,
                    zero_code, step_codes, out, outside):
    # mode: UNIFORM, LOG (`_octaves` tables) or STEP (ascending thresholds, a code table); exp_table: exp of
    # every gap 0 .. a_max (empty: by `_exponential`); outside[block] = 1 when a score of the block is past
    # +-SOFTMAX_INPUT_MAX (the range check, on the pass for the row max). Exponentials and probabilities are
    # Q30 (<= 2**30): int32 lanes.
    rows, n = x.shape
    for block in numba.prange((rows + SOFTMAX_ROW_BLOCK - 1) // SOFTMAX_ROW_BLOCK):
        e = np.empty(n, np.int32)  # once per block of rows: an allocation per row cost as much as the row
        count = np.empty(n, np.int32)
        for r in range(block * SOFTMAX_ROW_BLOCK, min(rows, (block + 1) * SOFTMAX_ROW_BLOCK)):
            xr, orow = x[r], out[r]
            top, bottom = xr[0], xr[0]
            for j in range(1, n):
                top, bottom = max(top, xr[j]), min(bottom, xr[j])
            if top > SOFTMAX_INPUT_MAX or bottom < -SOFTMAX_INPUT_MAX:
                outside[block] = 1
                continue
            if exp_table.size:  # the gap as an unsigned index (>= 0): no negative-index check per score
                for j in range(n):
                    e[j] = exp_table[np.uint32(min(top - xr[j], a_max))]
            else:
                for j in range(n):
                    e[j] = _exponential(np.int64(top) - np.int64(xr[j]), a_max, m, s)
            total = np.int64(0)
            for j in range(n):
                total += e[j]
            recip = np.uint32((np.int64(1) << SUM_RECIP_BITS) // total)  # <= 2**31: total >= 2**30, the max's exp
            for j in range(n):  # probabilities, in place: e, recip as unsigned 32-bit (one vpmuludq)
                e[j] = (np.uint64(np.uint32(e[j])) * np.uint64(recip) + np.uint64(1 << 30)) >> np.uint64(31)
            if mode == _UNIFORM:  # one loop per kind: a branch inside stopped the uniform one vectorising
                for j in range(n):
                    orow[j] = _uniform_code(np.int64(e[j]), um, us, uzp, qmax)
            elif mode == _LOG and first.size == 0:  # few thresholds (descending): count them all, 16 lanes
                for j in range(n):
                    count[j] = 0
                for k in range(thresholds.size):
                    t = np.int32(min(thresholds[k], (1 << 31) - 1))
                    for j in range(n):
                        count[j] += e[j] <= t
                for j in range(n):
                    orow[j] = zero_code if e[j] < zero_below else count[j]
            elif mode == _LOG:
                for j in range(n):
                    orow[j] = _log_code(np.int64(e[j]), thresholds, first, steps, zero_below, zero_code)
            else:
                for j in range(n):
                    orow[j] = step_codes[_count_at_or_below(np.int64(e[j]), thresholds)]


def _exp_table(c: SoftmaxConstants) -> np.ndarray:
    """exp of every gap 0 .. a_max as int32 (made once per exported softmax), empty when a_max is large."""
    table = _exp_tables.get(c)
    if table is None:
        table = np.zeros(0, np.int32)
        if c.a_max < SOFTMAX_TABLE_GAPS:
            table = gap_exponentials(np.arange(c.a_max + 1), c).astype(np.int32)
        _exp_tables[c] = table
    return table


def _code_dtype(lo: int, hi: int) -> type:
    """uint8 for codes that all fit a byte (a quarter of the memory traffic for the next op, which reads
    them as they are), else int32."""
    return np.uint8 if 0 <= lo and hi <= 255 else np.int32


def softmax(x: np.ndarray, c: SoftmaxConstants) -> np.ndarray:
    """[M, N] codes (uniform per tensor, log or a step table; uint8 when every code of the output fits, else
    int32) of the row-wise softmax of int32 scores."""
    check_code_shape(x, "softmax")
    x = np.ascontiguousarray(x)
    o = c.out
    if isinstance(o, LogOutput):
        dtype = _code_dtype(0, o.zero_code)
    elif isinstance(o, StepOutput):
        dtype = _code_dtype(int(o.codes.min()), int(o.codes.max()))
    else:
        dtype = _code_dtype(0, o.qmax)
    out = np.empty(x.shape, dtype)
    no_table, no_octaves = np.zeros(0, np.int32), np.zeros(64, np.int64)
    outside = np.zeros(-(-x.shape[0] // SOFTMAX_ROW_BLOCK), np.uint8)
    exp = (c.a_max, c.m, c.s, _exp_table(c))
    if isinstance(o, LogOutput):
        octaves = (o.thresholds, np.zeros(0, np.int64), 0) if o.thresholds.size <= LOG_COUNT_MAX else _octaves(
            o.thresholds)
        _softmax_kernel(x, *exp, _LOG, 0, 1, 0, 0, *octaves, o.zero_below, o.zero_code, no_table, out, outside)
    elif isinstance(o, StepOutput):
        _softmax_kernel(x, *exp, _STEP, 0, 1, 0, 0, o.thresholds, no_octaves, 0, 0, 0, o.codes, out, outside)
    else:
        _softmax_kernel(x, *exp, _UNIFORM, o.m[0], o.s[0], o.zero_point[0], o.qmax, np.zeros(0, np.int64),
                        no_octaves, 0, 0, 0, no_table, out, outside)
    if outside.any():
        raise ValueError(outside_range("softmax", SOFTMAX_INPUT_MAX))
    return out


# ----------------------------------------------------------------------------------------------- GELU


GELU_TABLE_BYTES = 4 << 20  # thresholds spanning a table of at most this size: a code per accumulator, in the
# narrowest integer type holding the codes (a byte each for 4 Mi accumulators)
GELU_BUCKETS = 1 << 14  # wider spans: the step count at each of at most this many bucket starts (64 KiB, in L2;
# measured fastest of 2**12 .. 2**21 on SLQ's 4- and 8-bit GELU steps)
_gelu_steps: WeakKeyDictionary[GeluConstants, tuple] = WeakKeyDictionary()  # made once per exported GELU


@numba.njit(cache=True, parallel=True)
def _gelu_bucket_kernel(acc, lo, hi, shift, first, thresholds, codes, out):
    # the count of thresholds <= v: the count at v's bucket start, then the few thresholds inside the bucket
    # (9x the binary search, whose branches mispredict, on SLQ's steps)
    n = thresholds.size
    for i in numba.prange(acc.size):
        v = min(max(np.int64(acc[i]), lo), hi)
        k = first[(v - lo) >> shift]
        while k < n and thresholds[k] <= v:
            k += 1
        out[i] = codes[k]


@numba.njit(cache=True, parallel=True)
def _gelu_table_kernel(acc, lo, hi, table, out):
    # one gather per accumulator (vectorised): measured 20x the binary search (mispredicted branches) on fc1;
    # the index as unsigned (>= 0 after the clamp): no negative-index check per accumulator
    for i in numba.prange(acc.size):
        out[i] = table[np.uint32(min(max(acc[i], lo), hi) - lo)]


def _narrowest(codes: np.ndarray) -> np.ndarray:
    """codes in the narrowest of uint8 / int8 / int16 / int32 that holds them."""
    for dtype in (np.uint8, np.int8, np.int16):
        if np.iinfo(dtype).min <= codes.min() and codes.max() <= np.iinfo(dtype).max:
            return codes.astype(dtype)
    return codes.astype(np.int32)


def _gelu_step_args(c: GeluConstants) -> tuple:
    """("table", lo, hi, table) or ("buckets", lo, hi, shift, first): how `gelu` finds an accumulator's code."""
    t, codes = c.thresholds, _narrowest(c.codes)
    i32 = np.iinfo(np.int32)
    if i32.min < t[0] and t[-1] <= i32.max and (t[-1] - t[0] + 2) * codes.itemsize <= GELU_TABLE_BYTES:
        # the code of every accumulator in [t[0] - 1, t[-1]] (the rest clamps there): code k over [t[k-1], t[k])
        return "table", np.int32(t[0] - 1), np.int32(t[-1]), np.repeat(codes, np.diff(t, prepend=t[0] - 1,
                                                                                   append=t[-1] + 1))
    # buckets of 2**shift accumulators from lo = t[0] - 1 (count 0) up to hi = t[-1] (count t.size)
    lo, hi = int(t[0]) - 1, int(t[-1])
    shift = max(0, (hi - lo).bit_length() - GELU_BUCKETS.bit_length() + 1)
    starts = lo + (np.arange(((hi - lo) >> shift) + 1, dtype=np.int64) << shift)
    return "buckets", lo, hi, shift, np.searchsorted(t, starts, side="right")


def gelu(acc: np.ndarray, c: GeluConstants) -> np.ndarray:
    """Codes (the shape of acc; uint8 when every code fits, else int32) of GELU on int32 accumulators, by
    the exported breakpoints."""
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"gelu takes int32 accumulators, got {acc.dtype}")
    flat = np.ascontiguousarray(acc).ravel()
    out = np.empty(flat.shape, _code_dtype(int(c.codes.min()), int(c.codes.max())))
    if not c.thresholds.size:
        out.fill(c.codes[0])
        return out.reshape(acc.shape)
    steps = _gelu_steps.get(c)
    if steps is None:
        steps = _gelu_steps[c] = _gelu_step_args(c)
    if steps[0] == "table":
        _gelu_table_kernel(flat, *steps[1:], out)
    else:
        _gelu_bucket_kernel(flat, *steps[1:], c.thresholds, c.codes, out)
    return out.reshape(acc.shape)
