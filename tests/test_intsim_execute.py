"""The Numba simulator equals the int64 reference executor on the demo, code for code.

Both run one op sequence (`execute_reference.run_program`) with different kernels, so any mismatch is a
kernel or a storage (dtype) difference. Calibration uses 32 images: the percentile observer is slow on
the full calibration split, and the residual scales only need realistic ranges. Measured: zero
mismatched codes in all 43 tensors for each of the four (method, bits) cases below.
"""

from __future__ import annotations

import numpy as np
import pytest

from adfq_sim.config import ModelConfig, QuantConfig
from adfq_sim.data.demo import load_demo_split
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.export import export
from adfq_sim.models.loading import load_model
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.recipes import build_recipe

CALIB_IMAGES, IMAGES = 32, 64


@pytest.fixture(scope="module")
def demo():
    model = load_model(ModelConfig()).model
    calib, _ = load_demo_split("calib")
    images, _ = load_demo_split("test")
    return model, [calib[:CALIB_IMAGES]], images[:IMAGES]


@pytest.mark.parametrize("method", ["minmax", "percentile"])
@pytest.mark.parametrize("bits", [8, 4])
def test_simulator_codes_and_logits_equal_reference(demo, method, bits):
    model, batches, images = demo
    program = export(quantize_model(model, build_recipe(method, QuantConfig()), bits, bits, batches), batches)
    ref_logits, ref_codes = run_reference(program, images)
    sim_logits, sim_codes = run_simulator(program, images)

    assert list(sim_codes) == list(ref_codes)
    mismatches = {name: int((sim_codes[name] != codes).sum()) for name, codes in ref_codes.items()}
    for name, codes in ref_codes.items():
        assert sim_codes[name].shape == codes.shape, name
    print(f"{method} W{bits}A{bits}: " + ", ".join(f"{n}={c}" for n, c in mismatches.items()))
    assert not any(mismatches.values()), {n: c for n, c in mismatches.items() if c}
    np.testing.assert_array_equal(sim_logits, ref_logits)
