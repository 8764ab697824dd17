"""The dyadic requantization rule: constants, rounding, and the compiled kernel form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adfq_sim.intsim.dyadic import dyadic, requantize, requantize_one

# The representable range: shift 1..62 with a 31-bit mantissa means ratios in [2**-31, 2**30).
ratios = st.floats(min_value=2.0**-31, max_value=2.0**29, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(ratio=ratios)
def test_dyadic_constants_are_accurate(ratio: float) -> None:
    m, s = dyadic(ratio)
    assert 2**30 <= m < 2**31
    assert abs(m / 2**s - ratio) <= ratio * 2.0**-31


@settings(max_examples=300, deadline=None)
@given(ratio=ratios, acc=st.integers(-(2**31) + 1, 2**31 - 1))
def test_requantize_rounds_half_up_exactly(ratio: float, acc: int) -> None:
    m, s = dyadic(ratio)
    expected = (acc * m + 2 ** (s - 1)) // 2**s  # Python integers: exact floor of (acc * m / 2**s + 1/2)
    assert int(requantize(np.array([acc]), m, s, -(2**62), 2**62)[0]) == expected
    assert int(requantize_one(np.int64(acc), np.int64(m), np.int64(s), np.int64(-(2**62)), np.int64(2**62))) == expected


def test_requantize_ties_go_up_and_clamp() -> None:
    m, s = 1 << 30, 31  # ratio 0.5
    acc = np.array([-3, -1, 1, 3, 1001])
    assert requantize(acc, m, s, -128, 127).tolist() == [-1, 0, 1, 2, 127]  # -1.5 -> -1, -0.5 -> 0


def test_per_channel_constants_broadcast() -> None:
    ms, ss = zip(*(dyadic(r) for r in (0.25, 0.01, 3.0)))
    acc = np.array([[100, 100, 100], [-7, -7, -7]])
    out = requantize(acc, np.array(ms), np.array(ss), -(2**15), 2**15 - 1)
    assert out.tolist() == [[25, 1, 300], [-2, 0, -21]]


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.inf, math.nan, 2.0**-33, 2.0**31])
def test_dyadic_refuses_impossible_ratios(ratio: float) -> None:
    with pytest.raises(ValueError):
        dyadic(ratio)
