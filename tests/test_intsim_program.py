"""Integer-only inference of the demo ViT (uniform methods): export, int64 reference run, accuracy.

Measured on all 450 demo test images, minmax W8A8: arg-max agreement with the fake-quant QuantModel
449 / 450 (99.8 %), integer top-1 97.78 % vs fake-quant 98.00 % (one image). The asserts allow
agreement >= 99 % and top-1 within 0.5 points (two images of 450).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adfq_sim.config import ModelConfig, QuantConfig
from adfq_sim.data.demo import load_demo_split
from adfq_sim.intsim.bounds import INT32_MAX
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.nonlinear_reference import SOFTMAX_INPUT_MAX
from adfq_sim.intsim.program import UnsupportedProgramError, export
from adfq_sim.models.loading import load_model
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.recipes import build_recipe, spec, uniform_everywhere

IMAGES = 450  # the whole test split


@pytest.fixture(scope="module")
def demo():
    model = load_model(ModelConfig()).model
    calib, _ = load_demo_split("calib")
    images, labels = load_demo_split("test")
    return model, list(calib.split(64)), images[:IMAGES], labels[:IMAGES].numpy()


def test_minmax_w8a8_integer_inference_matches_fake_quant(demo):
    model, batches, images, labels = demo
    qmodel = quantize_model(model, build_recipe("minmax", QuantConfig()), 8, 8, batches)
    program = export(qmodel, batches)

    gemms = [program.embed, program.head] + [g for b in program.blocks for g in (b.qkv, b.proj, b.fc1, b.fc2)]
    assert all(0 < g.acc_max <= INT32_MAX for g in gemms)
    assert all(b.scores_max <= SOFTMAX_INPUT_MAX and b.pv_max <= INT32_MAX for b in program.blocks)

    logits, codes = run_reference(program, images)
    with torch.no_grad():
        fake = qmodel(images).argmax(1).numpy()
        embed_q = qmodel.model.patch_embed.proj.act_q
        np.testing.assert_array_equal(codes["embed_in"], embed_q.quantize(images).reshape(IMAGES, -1).numpy())
    ours = logits.argmax(1)
    assert (ours == fake).sum() >= 0.99 * IMAGES
    assert abs(int((ours == labels).sum()) - int((fake == labels).sum())) <= 0.005 * IMAGES


def test_export_refuses_non_uniform_formats(demo):
    model, batches, _, _ = demo
    recipe = uniform_everywhere("log-probs", spec("uniform", observer="minmax"), probs=spec("log"))
    qmodel = quantize_model(model, recipe, 8, 8, batches)
    with pytest.raises(UnsupportedProgramError, match="uniform per-tensor quantizers only"):
        export(qmodel, batches)
