"""The log-shift GEMM as a few dense GEMMs with byte operands, so it runs on the dense (VNNI) kernel.

`reference.log_shift_gemm` fixes the contract: with code q = R j + r (R roots of 2 per octave),
accumulator r sums floor(b * 2**E / 2**j) over the live codes of remainder r. Write d = E - j:

- d >= 0 (exact terms): floor(b * 2**E / 2**j) = b * 2**d. Codes whose d lie in one window
  [base, base + 7] give sum b * 2**(d - base) times 2**base: a dense GEMM of the byte operand
  u = 2**(d - base) (1..128, 0 elsewhere) with B, shifted left by `base` afterwards.
- d < 0 (floored terms): floor(b * 2**E / 2**j) = b >> s with s = -d (arithmetic shift). With one
  indicator operand per shift s present, sum_s [s(q) = s] . (B >> s) is one dense GEMM over the
  concatenated K-blocks [1{s = s1} | 1{s = s2} | ...] x [B >> s1 | B >> s2 | ...]. Shifts at or past
  L = the bit length of B's values all give b >> L (0 or -1), so they share one block.

Every GEMM is exact in int32: |sum b * 2**(d - base)| <= 2**-base * sum |b| 2**E and
|sum b >> s| <= sum |b|, both within `bounds.log_shift_bound`, which export proved below 2**31. The
parts are combined in int64 exactly as the reference combines the accumulators (accumulator 0 plain,
accumulator r >= 1 by its dyadic rule once), so the result equals the reference bit for bit.
The plan depends on which codes occur, so it is made per call from a histogram of P.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
from numba import prange

from adfq_sim.intsim.dyadic import requantize_one
from adfq_sim.intsim.reference import root_rules

WINDOW = 8  # exponents per byte operand: 2**0 .. 2**7
_I64_MIN, _I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


@dataclass(frozen=True)
class LogGemm:
    """One dense GEMM of the plan: accumulator `lane`, K-blocks multiplying B >> shifts[i], the result
    shifted left by `scale` (a window of exact terms: shifts (0,), scale = its base)."""
    lane: int
    scale: int
    shifts: tuple[int, ...]


@dataclass(frozen=True)
class LogPlan:
    """The GEMMs, and per code (256 entries) which GEMM, which K-block and which byte it contributes
    (gemm -1: the zero code or an absent code); codes above zero_code are refused when the plan runs."""
    gemms: tuple[LogGemm, ...]
    gemm_of: np.ndarray
    block_of: np.ndarray
    value_of: np.ndarray
    zero_code: int

    @property
    def blocks(self) -> int:
        """K-blocks over all GEMMs: the plan's cost in units of one dense GEMM."""
        return sum(len(g.shifts) for g in self.gemms)


@numba.njit(cache=True, parallel=True)
def _histogram_kernel(codes, counts):
    # counts[c]: occurrences of each uint8 code in chunk c
    chunks = counts.shape[0]
    size = -(-codes.size // chunks)
    for c in prange(chunks):
        local = counts[c]
        for q in codes[c * size:(c + 1) * size]:
            local[q] += 1


@numba.njit(cache=True, parallel=True)
def _narrow_kernel(flat, codes, outside):
    # codes = flat as uint8; outside[c] != 0 when chunk c holds a value past 0..255 (one vectorised loop over
    # each chunk's slices: indexing the whole array from a computed range measured 8x slower)
    chunks = outside.size
    size = -(-flat.size // chunks)
    for c in prange(chunks):
        src, dst = flat[c * size:(c + 1) * size], codes[c * size:(c + 1) * size]
        bad = np.int64(0)
        for i in range(src.size):
            q = np.int64(src[i])
            bad |= q & np.int64(-256)
            dst[i] = np.uint8(q)
        outside[c] = bad


def log_codes(p: np.ndarray) -> np.ndarray:
    """Integer codes P as a C-contiguous uint8 array (no copy when they are already); a code outside 0..255
    is a ValueError."""
    codes = np.ascontiguousarray(p)
    if codes.dtype != np.uint8:
        outside = np.zeros(64, np.int64)
        codes, wide = np.empty(codes.shape, np.uint8), codes
        _narrow_kernel(wide.ravel(), codes.ravel(), outside)
        if outside.any():
            raise ValueError(f"log codes outside 0..255: [{wide.min()}, {wide.max()}]")
    return codes


def code_histogram(p: np.ndarray) -> np.ndarray:
    """The occurrences of each code 0..255 in uint8 codes P, counted in parallel chunks."""
    counts = np.zeros((64, 256), np.int64)
    _histogram_kernel(np.ascontiguousarray(p).ravel(), counts)
    return counts.sum(axis=0)


def bit_length(b: np.ndarray) -> int:
    """The smallest L with b >> L in {0, -1} for every value of b."""
    lo, hi = (int(b.min()), int(b.max())) if b.size else (0, 0)
    return max(hi.bit_length(), (~lo).bit_length() if lo < 0 else 0)


def log_shift_plan(counts: np.ndarray, e: int, roots: int, zero_code: int, b_bits: int) -> LogPlan:
    """The GEMMs that compute the log-shift GEMM of a P whose codes are those with counts > 0 (see the
    module docstring): its histogram, or every code when P is not looked at first; `b_bits`: `bit_length`
    of B."""
    gemm_of, block_of, value_of = (np.full(256, -1, np.int32), np.zeros(256, np.int32), np.zeros(256, np.uint8))
    gemms: list[LogGemm] = []
    live = [[q for q in range(lane, 256, roots) if q != zero_code and counts[q]] for lane in range(roots)]
    for lane, codes in enumerate(live):  # every lane's exact windows first: GEMMs with one W run as one call
        exact = sorted((q for q in codes if e - q // roots >= 0), key=lambda q: -(e - q // roots))
        while exact:  # windows from the largest exponent down, each holding as many codes as it can
            top = e - exact[0] // roots
            base = max(top - WINDOW + 1, 0)
            inside = [q for q in exact if e - q // roots >= base]
            for q in inside:
                gemm_of[q], value_of[q] = len(gemms), 1 << (e - q // roots - base)
            gemms.append(LogGemm(lane, base, (0,)))
            exact = exact[len(inside):]
    for lane, codes in enumerate(live):
        shift_of = {q: min(q // roots - e, b_bits) for q in codes if e - q // roots < 0}
        if shift_of:
            shifts = tuple(sorted(set(shift_of.values())))
            for q, s in shift_of.items():
                gemm_of[q], block_of[q], value_of[q] = len(gemms), shifts.index(s), 1
            gemms.append(LogGemm(lane, 0, shifts))
    return LogPlan(tuple(gemms), gemm_of, block_of, value_of, zero_code)


@numba.njit(cache=True, parallel=True)
def _fill_operands(p, tables, offsets, blocks, out, highest):
    # p [G, M, K] codes -> out: GEMM g's operand [G, M, blocks[g] * K] at out[offsets[g]:]; its K-block t
    # holds tables[offsets of (g, t)][code] (`log_block_tables`): a gather from a 256-byte table per element;
    # highest[row] = the row's largest code (the range check, in the same pass)
    groups, m, k = p.shape
    for row_index in prange(groups * m):
        row = p[row_index // m, row_index % m]
        top = np.uint8(0)
        for c in range(k):
            top = max(top, row[c])
        highest[row_index] = top
        table = 0
        for g in range(blocks.shape[0]):
            for t in range(blocks[g]):
                dst = out[offsets[g] + (row_index * blocks[g] + t) * k:]
                lookup = tables[table]
                for c in range(k):
                    dst[c] = lookup[row[c]]
                table += 1


def log_block_tables(plan: LogPlan) -> np.ndarray:
    """[blocks, 256] uint8: per K-block of each GEMM in order, the byte each code contributes there."""
    tables = []
    for index, gemm in enumerate(plan.gemms):
        for t in range(len(gemm.shifts)):
            tables.append(np.where((plan.gemm_of == index) & (plan.block_of == t), plan.value_of, 0))
    return np.array(tables, np.uint8).reshape(-1, 256)


def check_highest_code(highest: np.ndarray, plan: LogPlan) -> None:
    """The rows' largest codes (found while filling the operands) must not pass the plan's zero code."""
    if highest.size and highest.max() > plan.zero_code:
        raise ValueError(f"log codes [0, {highest.max()}] outside 0 .. the zero code {plan.zero_code}")


def log_shift_by_gemms(p: np.ndarray, b: np.ndarray, plan: LogPlan, roots: int, bias: np.ndarray | None,
                       dense: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """`reference.log_shift_gemm` of p [G, M, K] uint8 and b [1 | G, N, K] by `plan`'s GEMMs, each run by
    `dense(a, w)` (A [G, M, K'] uint8, W [1 | G, N, K'] -> int32 [G, M, N]); int32 [G, M, N]."""
    groups, m, k = p.shape
    blocks = np.array([len(g.shifts) for g in plan.gemms], np.int64)
    offsets = np.concatenate([[0], np.cumsum(blocks * groups * m * k)])
    operands, highest = np.empty(int(offsets[-1]), np.uint8), np.zeros(groups * m, np.uint8)
    _fill_operands(p, log_block_tables(plan), offsets[:-1].copy(), blocks, operands, highest)
    check_highest_code(highest, plan)
    parts = np.empty((len(plan.gemms), groups, m, b.shape[-2]), np.int32)
    first = 0
    while first < len(plan.gemms):  # consecutive GEMMs with the same W: one call, their operands stacked
        shifts = plan.gemms[first].shifts
        last = first + 1
        while last < len(plan.gemms) and plan.gemms[last].shifts == shifts:
            last += 1
        a = operands[offsets[first]:offsets[last]].reshape((last - first) * groups, m, len(shifts) * k)
        w = b if shifts == (0,) else np.concatenate([b >> s for s in shifts], axis=-1)
        w = w[0] if w.shape[0] == 1 else np.concatenate([w] * (last - first))  # shared, or per stacked group
        parts[first:last] = dense(a, w).reshape(last - first, groups, m, -1)
        first = last
    out = np.empty(parts.shape[1:], np.int32)
    bias = np.zeros(out.shape[-1], np.int64) if bias is None else np.asarray(bias, np.int64)
    _combine(parts, np.array([g.lane for g in plan.gemms], np.int64), np.array([g.scale for g in plan.gemms], np.int64),
             roots, *root_rules(roots), bias, out)
    return out


@numba.njit(cache=True, inline="always")
def combine_row(parts, lane_of, scale_of, rule_m, rule_s, bias, lanes, out):
    """One output row: accumulator 0 + bias + the dyadic rule of each accumulator r >= 1, each accumulator
    the sum of its GEMMs' int32 results (parts [GEMMs, N], one row each) shifted left by their scales, in
    int64 scratch lanes [roots, N] (the final value wraps into int32 like every int32 kernel's; export
    proved it fits)."""
    n = out.size
    lanes[:] = 0
    for p in range(parts.shape[0]):
        lane, scale, src = lanes[lane_of[p]], scale_of[p], parts[p]
        for j in range(n):
            lane[j] += np.int64(src[j]) << scale
    total = lanes[0]
    for j in range(n):
        total[j] += bias[j]
    for r in range(1, lanes.shape[0]):
        lane, rm, rs = lanes[r], rule_m[r], rule_s[r]
        for j in range(n):
            total[j] += requantize_one(lane[j], rm, rs, _I64_MIN, _I64_MAX)
    for j in range(n):
        out[j] = total[j]


@numba.njit(cache=True, parallel=True)
def _combine(parts, lane_of, scale_of, roots, rule_m, rule_s, bias, out):
    # `combine_row` for every row of out [G, M, N] from parts [GEMMs, G, M, N]
    groups, m, n = out.shape
    for row_index in prange(groups * m):
        g, i = row_index // m, row_index % m
        combine_row(parts[:, g, i], lane_of, scale_of, rule_m, rule_s, bias, np.empty((roots, n), np.int64),
                    out[g, i])
