"""Calibration samples do not depend on the batch size: the same stream cut into any batches gives the
same sample, in the same order, within its budget; and every observer and quantizer that samples gives
the same range whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adfq_sim.quant.observers import PercentileMseObserver, PercentileObserver
from adfq_sim.quant.ppoq import PerPatchOutlierQuantizer
from adfq_sim.quant.quantizers import LogQuantizer
from adfq_sim.quant.sampling import MAX_DEPTH, StreamSample, stream_levels
from adfq_sim.quant.twin_uniform import TwinUniformQuantizer


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, x.shape[0], size)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), units=st.integers(1, 40), rows=st.integers(1, 3), width=st.integers(1, 30),
       budget=st.integers(1, 400), size=st.integers(1, 40))
def test_any_batching_gives_the_same_sample_within_budget(seed, units, rows, width, budget, size):
    x = torch.randn(units, rows, width, generator=torch.Generator().manual_seed(seed))
    whole, split = StreamSample(budget), StreamSample(budget)
    whole.add(x.permute(1, 0, 2))
    for batch in _batches(x, size):
        split.add(batch.permute(1, 0, 2))
    assert torch.equal(whole.values(), split.values()) and whole.depth == split.depth
    kept = whole.values()
    assert kept.shape[0] == rows and (kept.numel() <= budget or whole.depth == MAX_DEPTH)
    # the sample is the stream's values at the kept places, in stream order, the same places in every row
    levels = stream_levels(0, units, width)
    places = torch.from_numpy(np.flatnonzero(levels >= whole.depth))
    assert torch.equal(kept, x.permute(1, 0, 2).reshape(rows, -1)[:, places])


def test_levels_halve_and_deeper_samples_nest():
    levels = stream_levels(0, 500, 1000)
    shares = np.array([(levels >= h).mean() for h in range(6)])
    assert np.allclose(shares, 0.5 ** np.arange(6), rtol=0.02)
    # a smaller budget keeps a subset of a larger one's places
    x = torch.arange(20000, dtype=torch.float32).reshape(1, 200, 100)
    small, large = StreamSample(500), StreamSample(5000)
    small.add(x), large.add(x)
    assert small.depth > large.depth and set(small.values().flatten().tolist()) <= set(large.values().flatten().tolist())


def test_a_budget_bigger_than_the_stream_keeps_everything():
    x = torch.randn(9, 4, 5)
    sample = StreamSample(10_000)
    for batch in _batches(x, 2):
        sample.add(batch.reshape(1, batch.shape[0], -1))
    assert sample.depth == 0 and torch.equal(sample.values(), x.reshape(1, -1))


@pytest.mark.parametrize("make", [
    lambda: PercentileObserver(99.0),
    lambda: PercentileMseObserver(4),
])
def test_per_tensor_observers_are_batch_size_free(make, monkeypatch):
    monkeypatch.setattr("adfq_sim.quant.observers.PERCENTILE_SAMPLE_BUDGET", 3000)
    x = torch.randn(64, 17, 32, generator=torch.Generator().manual_seed(1)) ** 3
    ranges = []
    for size in (7, 64):
        observer = make()
        for batch in _batches(x, size):
            observer.observe(batch, (0, 1, 2))
        ranges.append(observer.range())
    assert all(torch.equal(a, b) for a, b in zip(*ranges))


@pytest.mark.parametrize("make", [
    lambda: PerPatchOutlierQuantizer(4, alpha=2.0),
    lambda: LogQuantizer(4, delta_init="search"),
    lambda: TwinUniformQuantizer(4, mode="gelu", lower=-0.17),
])
def test_sampling_quantizers_calibrate_the_same_at_any_batch_size(make, monkeypatch):
    monkeypatch.setattr("adfq_sim.quant.observers.PERCENTILE_SAMPLE_BUDGET", 3000)
    monkeypatch.setattr("adfq_sim.quant.ppoq.MAX_CALIBRATION_VALUES", 3000)
    x = torch.randn(64, 17, 32, generator=torch.Generator().manual_seed(2)) * 1.5
    states = []
    for size in (7, 64):
        quantizer = make()
        for batch in _batches(x, size):
            quantizer.observe(batch)
        quantizer.freeze()
        states.append({k: v.clone() for k, v in quantizer.state_dict().items()})
    assert states[0].keys() == states[1].keys() and states[0]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_distributions_read_the_whole_calibration_set_at_any_batch_size():
    """The drawn block is the one with the largest post-LayerNorm magnitude over every calibration image
    (here only the last image reaches it), and the histograms count every image, batched either way."""
    from adfq_sim.distributions import capture
    from conftest import tiny_vit

    model = tiny_vit().double()
    images = torch.randn(9, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    images[-1] *= 40.0
    whole = capture(model, [images])
    assert capture(model, _batches(images, 4)) == whole
    peaks = {}
    for block in ("blocks.0", "blocks.1"):
        out = []
        handle = model.get_submodule(f"{block}.norm1").register_forward_hook(lambda _m, _i, o: out.append(o))
        with torch.no_grad():
            model(images)
        handle.remove()
        peaks[block] = float(out[0].abs().max())
    assert whole["block"] == max(peaks, key=peaks.get) and whole["images"] == 9
    assert whole["post_layernorm"]["values"] == 9 * 17 * 32 and whole["post_gelu"]["values"] == 9 * 17 * 128
