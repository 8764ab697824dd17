"""The integer-faithful PyTorch mode against the int64 NumPy reference, code for code (zero mismatches).

Two independent readings of one IntegerProgram must agree at every quantized tensor of the demo (64 test
images, minmax and percentile at W8A8 and W4A4): zero mismatches. `verify` must see a single planted
code error, with its size, at the one tensor it was planted in.
"""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch

from adfq_sim.data.demo import load_demo_split
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.faithful import _isqrt, run_faithful
from adfq_sim.intsim.export import export
from adfq_sim.intsim.verify import format_table, total_mismatches, verify
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig

IMAGES = 64


@pytest.fixture(scope="module")
def demo():
    model = load_model(ModelConfig()).model
    calib, _ = load_demo_split("calib")
    images, _ = load_demo_split("test")
    return model, list(calib.split(64)), images[:IMAGES]


@pytest.fixture(scope="module")
def runs(demo):
    """(reference codes, faithful codes, reference logits, faithful logits) per (method, bits).

    One torch thread: these tensors are small, and on a loaded 2-core machine OpenMP threads waiting
    for each other made this fixture take 40-80 s instead of 4 s.
    """
    model, batches, images = demo
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for method in ("minmax", "percentile"):
            for bits in (8, 4):
                recipe = build_recipe(method, QuantConfig())
                program = export(quantize_model(model, recipe, bits, bits, batches), batches)
                ref_logits, ref_codes = run_reference(program, images)
                logits, codes = run_faithful(program, images)
                out[method, bits] = ref_codes, codes, ref_logits, logits.numpy()
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("method", ["minmax", "percentile"])
@pytest.mark.parametrize("bits", [8, 4])
def test_faithful_mode_equals_reference_at_every_tensor(runs, method, bits):
    ref_codes, codes, ref_logits, logits = runs[method, bits]
    reports = verify(ref_codes, codes)
    assert [r.name for r in reports] == list(ref_codes)
    assert all(r.elements == ref_codes[r.name].size > 0 for r in reports)
    assert [r.name for r in reports if r.mismatches or r.max_abs_diff] == [], format_table(reports)
    assert total_mismatches(reports) == 0
    np.testing.assert_array_equal(logits, ref_logits)


def test_planted_corruption_is_reported_once_with_its_size(runs):
    ref_codes, codes, _, _ = runs["minmax", 4]
    corrupted = {name: c.clone() for name, c in codes.items()}
    corrupted["blocks.1.probs"][3, 17] += 5
    reports = verify(ref_codes, corrupted)
    bad = [(r.op, r.tensor, r.mismatches, r.max_abs_diff) for r in reports if r.mismatches]
    assert bad == [("blocks.1", "probs", 1, 5)]
    assert total_mismatches(reports) == 1
    table = format_table(reports)
    assert table.splitlines()[-1].split()[-2:] == ["1", "5"]
    assert any(line.split()[:6] == ["blocks.1", "probs", "-", str(ref_codes["blocks.1.probs"].size), "1", "5"]
               for line in table.splitlines())


def test_structural_differences_raise(runs):
    ref_codes, codes, _, _ = runs["minmax", 8]
    with pytest.raises(ValueError, match="different tensors"):
        verify(ref_codes, {k: v for k, v in codes.items() if k != "head_in"})
    with pytest.raises(ValueError, match="shapes differ"):
        verify(ref_codes, {**codes, "head_in": codes["head_in"][:-1]})


def test_faithful_isqrt_is_exact():
    """An off-by-one root barely moves LayerNorm's reciprocal (root >= 2**30), so the model run cannot
    catch it: check the integer Newton root itself, at squares, their neighbours and the int64 edge."""
    rng = np.random.default_rng(0)
    roots = np.concatenate([np.arange(0, 50), rng.integers(0, 2**31, 200), [2**31 - 1]])
    n = np.unique(np.concatenate([roots**2, np.maximum(roots**2 - 1, 0), roots**2 + 1, [2**62 - 1, 2**62],
                                  rng.integers(0, 2**62, 500)]))
    expected = [math.isqrt(int(v)) for v in n]
    assert _isqrt(torch.from_numpy(n)).tolist() == expected
