"""Dyadic requantization: the one rescaling rule of the integer contract.

A float ratio r > 0 (e.g. s_in * s_w / s_out) becomes an integer multiplier m and a right shift s with
r ~= m / 2**s, m in [2**30, 2**31) (a 31-bit mantissa, as I-ViT / gemmlowp). An int32 accumulator is
rescaled as

    y = clamp((acc * m + offset + 2**(s - 1)) >> s, lo, hi)        (arithmetic shift: round half up)

in int64 arithmetic: |acc| < 2**31 and m < 2**31 keep acc * m inside int64. The offset (0 but for the
layers that feed the residual stream) is a bias on the output's scale with s fractional bits: adding a
bias there instead of on a coarse accumulator grid keeps it exact to 2**-s of an output step. The same
rule serves the int64 reference (`requantize`, NumPy) and the Numba kernels (`requantize_one`, compiled), and
`round_half_up` on the fake-quant side rounds the same way.
"""

from __future__ import annotations

import math

import numba
import numpy as np

MANTISSA_BITS = 31
MAX_SHIFT = 62  # 2**(s-1) and acc * m stay inside int64


def dyadic(ratio: float) -> tuple[int, int]:
    """(m, s) with m / 2**s the closest such value to `ratio` (> 0), m in [2**30, 2**31)."""
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"requantization ratio must be finite and > 0, got {ratio}")
    mantissa, exponent = math.frexp(ratio)  # ratio = mantissa * 2**exponent, mantissa in [0.5, 1)
    m = int(round(mantissa * (1 << MANTISSA_BITS)))
    shift = MANTISSA_BITS - exponent
    if m == 1 << MANTISSA_BITS:  # the mantissa rounded up to 1.0
        m, shift = m >> 1, shift - 1
    if not 0 < shift <= MAX_SHIFT:
        raise ValueError(f"requantization ratio {ratio} needs shift {shift}, outside 1..{MAX_SHIFT}")
    return m, shift


def dyadic_array(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`dyadic` element-wise (m, s as int64 arrays of the ratios' shape), vectorised for per-token x
    per-channel rules; equal to `dyadic` on every element."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if not (np.isfinite(ratios).all() and (ratios > 0).all()):
        raise ValueError("requantization ratios must be finite and > 0")
    mantissa, exponent = np.frexp(ratios)
    m = np.round(mantissa * float(1 << MANTISSA_BITS)).astype(np.int64)  # exact: < 2**32
    shift = MANTISSA_BITS - exponent.astype(np.int64)
    carry = m == 1 << MANTISSA_BITS
    m, shift = np.where(carry, m >> 1, m), np.where(carry, shift - 1, shift)
    if ((shift <= 0) | (shift > MAX_SHIFT)).any():
        raise ValueError(f"a requantization ratio needs a shift outside 1..{MAX_SHIFT}")
    return m, shift


def requantize(acc: np.ndarray, m: np.ndarray | int, s: np.ndarray | int, lo: int, hi: int,
               offset: np.ndarray | int = 0) -> np.ndarray:
    """The rule on int64 arrays (m, s, offset broadcast: per tensor, per channel or per token)."""
    acc = np.asarray(acc, dtype=np.int64)
    m, s = np.asarray(m, dtype=np.int64), np.asarray(s, dtype=np.int64)
    return np.clip((acc * m + np.asarray(offset, dtype=np.int64) + (np.int64(1) << (s - 1))) >> s, lo, hi)


@numba.njit(cache=True, inline="always")
def requantize_offset_one(acc: np.int64, m: np.int64, s: np.int64, offset: np.int64, lo: np.int64,
                          hi: np.int64) -> np.int64:
    """The rule on one int64 value, for Numba kernels."""
    y = (acc * m + offset + (np.int64(1) << (s - 1))) >> s
    return min(max(y, lo), hi)


@numba.njit(cache=True, inline="always")
def requantize_one(acc: np.int64, m: np.int64, s: np.int64, lo: np.int64, hi: np.int64) -> np.int64:
    """The rule without an offset."""
    return requantize_offset_one(acc, m, s, np.int64(0), lo, hi)
