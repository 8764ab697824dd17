"""Accumulator bounds of the integer GEMMs, proven at export: an accumulator never wraps silently.

The kernels accumulate in int32 without checks; export calls `check_int32` on every GEMM's bound and
refuses a layer that could overflow (naming it), so a kernel never runs on an unproven layer.

The proof: every GEMM of `reference` is a sum of per-position terms, and each term's range here
contains 0. Then every partial sum, in any order and over any subset of positions (what a vectorised
or tiled loop forms), lies in [sum of the terms' minima, sum of their maxima], so bounding the full sum
bounds every intermediate too. Per output channel n and position k:
- dense: A[m, k] * W[n, k] with A in [a_lo, a_hi], W[n, k] in [w_lo, w_hi] (equal for weights); PPOQ's
  dense part is bounded alone (its outlier codes hold the zero-point), the sparse products are summed
  in int64 by the program;
- log-shift: floor(b * 2**E / 2**j) lies between min(b, 0) * 2**E and max(b, 0) * 2**E for any j >= 0,
  and a base 2**(1/R) keeps it: the R accumulators split the terms, and for an integer x,
  |requantize(x, 2**(-r/R))| <= |x| with the sign of x; each accumulator times m < 2**31 then fits int64;
- the bias counts as a term in [min(bias, 0), max(bias, 0)].
Ranges count min(0, .) and max(0, .) of each term, so the bound is the attained extreme whenever the
code ranges contain 0 (codes minus zero-points always do). Computed in float64: every value is an
integer, exact below 2**53, far above the int32 limit where the decision is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class AccumulatorOverflowError(ValueError):
    """A layer whose int32 accumulator could overflow: refused at export."""


@dataclass(frozen=True)
class AccBound:
    """Per output channel, the least and greatest value any partial sum of the accumulator can take."""

    lo: np.ndarray  # [N] float64 holding integers
    hi: np.ndarray

    @property
    def max_abs(self) -> int:
        return int(max(-self.lo.min(initial=0.0), self.hi.max(initial=0.0)))


def _product_range(x_lo, x_hi, y_lo, y_hi) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise range of x * y over two boxes, widened to contain 0."""
    corners = [np.multiply(x, y, dtype=np.float64) for x in (x_lo, x_hi) for y in (y_lo, y_hi)]
    return np.minimum(np.minimum.reduce(corners), 0.0), np.maximum(np.maximum.reduce(corners), 0.0)


def _finish(lo: np.ndarray, hi: np.ndarray, bias: np.ndarray | None) -> AccBound:
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        lo, hi = lo + np.minimum(bias, 0.0), hi + np.maximum(bias, 0.0)
    return AccBound(lo=lo, hi=hi)


def dense_bound(a_range: tuple[int, int], w_lo: np.ndarray, w_hi: np.ndarray | None = None,
                bias: np.ndarray | None = None) -> AccBound:
    """Bound of `dense_gemm` per output channel.

    a_range: the codes of A (minus zero-points), all tokens included. w_lo, w_hi: elementwise limits of
    W, broadcastable to [N, K]; for a weight layer pass the weight codes as w_lo (w_hi defaults to it),
    for an activation operand (Q.K^T) arrays [1, K] of its code range.
    """
    w_lo = np.atleast_2d(np.asarray(w_lo))
    w_hi = w_lo if w_hi is None else np.atleast_2d(np.asarray(w_hi))
    d_lo, d_hi = _product_range(*a_range, w_lo, w_hi)
    d_lo, d_hi = np.broadcast_arrays(d_lo, d_hi)
    return _finish(d_lo.sum(axis=1), d_hi.sum(axis=1), bias)


def log_shift_bound(b_lo: np.ndarray, b_hi: np.ndarray | None, e: int,
                    bias: np.ndarray | None = None) -> AccBound:
    """Bound of `log_shift_gemm` (either base) per output channel.

    b_lo, b_hi: elementwise limits of B broadcastable to [N, K] (b_hi None: B is known, e.g. fc2
    weights; for softmax.V pass [1, K] arrays of the V code range). e: the fraction bits E.
    """
    b_lo = np.atleast_2d(np.asarray(b_lo, dtype=np.float64))
    b_hi = b_lo if b_hi is None else np.atleast_2d(np.asarray(b_hi, dtype=np.float64))
    lo = np.minimum(b_lo, 0.0).sum(axis=1) * 2.0**e
    hi = np.maximum(b_hi, 0.0).sum(axis=1) * 2.0**e
    return _finish(lo, hi, bias)


def check_int32(bound: AccBound, layer: str) -> int:
    """The proven max |acc| of `layer`; raises AccumulatorOverflowError if int32 could overflow."""
    if bound.lo.min(initial=0.0) < INT32_MIN or bound.hi.max(initial=0.0) > INT32_MAX:
        channel = int(np.argmax(np.maximum(-bound.lo - (1 << 31), bound.hi - INT32_MAX)))
        raise AccumulatorOverflowError(
            f"layer {layer!r}: the int32 accumulator could reach [{int(bound.lo[channel])}, "
            f"{int(bound.hi[channel])}] at output channel {channel}, outside [{INT32_MIN}, {INT32_MAX}]; "
            f"lower its bit-widths, outlier shift or log fraction bits E, or widen it explicitly")
    return bound.max_abs
