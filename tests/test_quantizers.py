"""Quantizer properties: error within half a step inside the range, idempotence, codes in range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adfq_sim.quant.observers import MinMaxObserver, PercentileObserver
from adfq_sim.quant.quantizers import UniformQuantizer
from adfq_sim.quant.rounding import round_half_up, round_ste

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
calib_arrays = arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 24)), elements=finite)


def _calibrated(calib: np.ndarray, bits: int, granularity: str = "tensor") -> UniformQuantizer:
    q = UniformQuantizer(bits, granularity, MinMaxObserver())
    q.calibrate_static(torch.from_numpy(calib))
    return q


@settings(max_examples=200, deadline=None)
@given(calib=calib_arrays, bits=st.integers(2, 8), frac=st.lists(st.floats(0, 1), min_size=1, max_size=32))
def test_error_within_half_step_inside_range(calib: np.ndarray, bits: int, frac: list[float]) -> None:
    q = _calibrated(calib, bits)
    lo = float((0 - q.zero_point) * q.scale)
    hi = float((q.qmax - q.zero_point) * q.scale)
    x = torch.tensor([lo + f * (hi - lo) for f in frac], dtype=torch.float32)
    err = (q(x) - x).abs()
    step = float(q.scale)
    assert float(err.max()) <= step / 2 + 1e-5 * max(1.0, abs(lo), abs(hi))


@settings(max_examples=200, deadline=None)
@given(calib=calib_arrays, bits=st.integers(2, 8), x=arrays(np.float32, 16, elements=finite))
def test_codes_in_range_and_requantization_idempotent(calib: np.ndarray, bits: int, x: np.ndarray) -> None:
    q = _calibrated(calib, bits)
    xt = torch.from_numpy(x)
    codes = q.quantize(xt)
    assert torch.equal(codes, codes.round())
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    once = q(xt)
    assert torch.equal(q.quantize(once), codes)
    assert torch.equal(q(once), once)


@settings(max_examples=100, deadline=None)
@given(calib=calib_arrays, bits=st.integers(2, 8))
def test_range_contains_zero_exactly(calib: np.ndarray, bits: int) -> None:
    q = _calibrated(calib, bits)
    assert float(q(torch.zeros(3)).abs().max()) == 0.0


@settings(max_examples=100, deadline=None)
@given(weight=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=finite),
       bits=st.integers(2, 8))
def test_per_channel_error_within_each_channels_half_step(weight: np.ndarray, bits: int) -> None:
    q = _calibrated(weight, bits, "channel")
    w = torch.from_numpy(weight)
    assert q.scale.shape == (w.shape[0], 1)
    err = (q(w) - w).abs()
    tol = q.scale / 2 + 1e-5 * w.abs().amax(dim=1, keepdim=True).clamp(min=1.0)
    assert bool((err <= tol).all())


def test_per_channel_beats_per_tensor_on_unequal_channels() -> None:
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 0, 8)[:, None]
    per_tensor = _calibrated(w.numpy(), 4, "tensor")
    per_channel = _calibrated(w.numpy(), 4, "channel")

    def worst_channel_relative_error(q: UniformQuantizer) -> float:
        return float((((q(w) - w) ** 2).mean(dim=1) / (w ** 2).mean(dim=1)).max())

    # Per tensor, the smallest channel rounds to zero (relative error 1); per channel it keeps its shape.
    assert worst_channel_relative_error(per_tensor) > 0.5
    assert worst_channel_relative_error(per_channel) < 0.05


def test_round_half_up_and_straight_through_gradient() -> None:
    x = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.5, 0.49], requires_grad=True)
    assert round_half_up(x.detach()).tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0, 0.0]
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0] * 6


def test_percentile_observer_clips_outliers_and_is_monotone() -> None:
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    x[0] = 100.0
    ranges = []
    for p in (99.0, 99.9, 100.0):
        obs = PercentileObserver(p)
        obs.observe(x, (0,))
        ranges.append(obs.range())
    his = [float(hi) for _, hi in ranges]
    assert his[0] < his[1] < his[2] == 100.0
    assert his[1] < 5.0  # the planted outlier does not set the range


def test_quantizer_refuses_use_before_calibration() -> None:
    with pytest.raises(RuntimeError, match="before calibration"):
        UniformQuantizer(4, "tensor", MinMaxObserver())(torch.ones(2))
