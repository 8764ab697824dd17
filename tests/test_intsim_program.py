"""Integer-only inference of the demo ViT: export, int64 reference run, accuracy, file format, listing.

Measured on all 450 demo test images, minmax W8A8: arg-max agreement with the fake-quant QuantModel
449 / 450 (99.8 %), integer top-1 97.78 % vs fake-quant 98.00 % (one image). The asserts allow
agreement >= 99 % and top-1 within 0.5 points (two images of 450).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from adfq_sim.data.demo import load_demo_split
from adfq_sim.intsim.bounds import INT32_MAX
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.nonlinear_reference import SOFTMAX_INPUT_MAX
from adfq_sim.intsim import execute_reference, faithful
from adfq_sim.intsim.export import export
from adfq_sim.intsim.ops import OP_TYPES, AttentionMix, AttentionScores, Linear
from adfq_sim.intsim.program import FILE_FORMAT, UnsupportedProgramError, describe, load_program, save_program
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig
from adfq_sim.quant.recipes import spec, uniform_everywhere
from hw_models.workload import PRICED

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

    linears = [op for op in program.ops if isinstance(op, Linear)]
    assert [op.name for op in linears] == ["patch_embed"] + [f"blocks.{i}.{layer}" for i in range(4) for layer in (
        "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")] + ["head"]
    assert all(0 < op.gemm.acc_max <= INT32_MAX for op in linears)
    assert all(0 < op.acc_max <= SOFTMAX_INPUT_MAX for op in program.ops if isinstance(op, AttentionScores))
    assert all(0 < op.acc_max <= INT32_MAX for op in program.ops if isinstance(op, AttentionMix))

    logits, codes = run_reference(program, images)
    with torch.no_grad():
        fake = qmodel(images).argmax(1).numpy()
        embed_q = qmodel.model.patch_embed.proj.act_q
        np.testing.assert_array_equal(codes["embed_in"], embed_q.quantize(images).reshape(IMAGES, -1).numpy())
    ours = logits.argmax(1)
    assert (ours == fake).sum() >= 0.99 * IMAGES
    assert abs(int((ours == labels).sum()) - int((fake == labels).sum())) <= 0.005 * IMAGES


def test_export_refuses_float_outliers_naming_the_layer(demo):
    model, batches, _, _ = demo
    quant = QuantConfig(adfq=dataclasses.replace(QuantConfig().adfq, outliers="float", asmo=False))
    qmodel = quantize_model(model, build_recipe("adfq", quant), 8, 8, batches)
    with pytest.raises(UnsupportedProgramError, match=r"blocks\.0\.attn\.qkv\.act_q: PPOQ outliers in float"):
        export(qmodel, batches)


def test_export_refuses_formats_where_no_op_produces_them(demo):
    model, batches, _, _ = demo
    recipe = uniform_everywhere("log-q", spec("uniform", observer="minmax"), q=spec("log"))
    qmodel = quantize_model(model, recipe, 8, 8, batches)
    with pytest.raises(UnsupportedProgramError, match=r"blocks\.0\.attn\.q_q: .* takes uniform-tensor here, got logsqrt2"):
        export(qmodel, batches)


def test_program_file_round_trip_and_listing(demo, tmp_path):
    model, batches, images, _ = demo
    program = export(quantize_model(model, build_recipe("minmax", QuantConfig()), 4, 4, batches), batches)
    path = save_program(program, tmp_path / "p.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["p.npz"]  # written atomically, no partial file left
    loaded = load_program(path)
    np.testing.assert_array_equal(run_reference(loaded, images[:8])[0], run_reference(program, images[:8])[0])
    listing = describe(loaded).splitlines()
    assert listing[0].startswith(f"IntegerProgram (vit): {len(program.ops)} ops, {len(program.tensors)} tensors")
    assert [line.split()[0] for line in listing[1:-1]] == [op.name for op in program.ops]  # one line per op
    for i in range(4):
        assert any(line.startswith(f"blocks.{i}.mlp.gelu ") and "step table" in line for line in listing)
    assert any("uniform codes - zp" in line and "|acc| <=" in line for line in listing)

    (tmp_path / "bad.npz").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="bad.npz: not an integer program file"):
        load_program(tmp_path / "bad.npz")
    old = tmp_path / "old.npz"  # a file of version 1 (a fixed ViT block structure): refused in one line
    np.savez(old, __structure__=np.array(json.dumps({"format": FILE_FORMAT, "version": 1, "program": {}})))
    with pytest.raises(ValueError, match=r"old.npz: an integer program file of version 1; .* reads version 2"):
        load_program(old)


def test_every_reader_takes_every_op_type() -> None:
    """The executors and the cost model's workload each cover every op type: a new op cannot run in one
    executor only or go unpriced by omission (the program file round-trips ViT's ops here and Swin's in
    test_intsim_swin)."""
    assert set(execute_reference.HANDLERS) == set(faithful.HANDLERS) == set(PRICED) == set(OP_TYPES)
    assert all(callable(getattr(op, "describe", None)) for op in OP_TYPES)  # the listing
