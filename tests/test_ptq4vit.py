"""PTQ4ViT: twin-uniform quantizer (error, code range, integer form) and the Hessian-guided search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adfq_sim.config import load_config
from adfq_sim.data.demo import load_demo_split
from adfq_sim.errors import UserInputError
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.pipeline import run_experiment
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import Ptq4vitConfig, QuantConfig
from adfq_sim.quant.quantizers import GELU_MINIMUM
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.modules import QuantConv2d, QuantLinear
from adfq_sim.quant.observers import MinMaxObserver, PercentileMseObserver
from adfq_sim.quant.ptq4vit import hessian_distances, hessian_search
from adfq_sim.quant.quantizers import UniformQuantizer
from adfq_sim.quant.twin_uniform import TwinUniformQuantizer
from conftest import write_config

# Small searches keep the file fast; the defaults are exercised by the demo benchmark.
FAST = Ptq4vitConfig(candidates=12, rounds=1, images=16)


def _twin(values: torch.Tensor, bits: int, mode: str) -> TwinUniformQuantizer:
    q = TwinUniformQuantizer(bits, mode, GELU_MINIMUM if mode == "gelu" else None)
    q.begin_calibration()
    q(values)
    q.end_calibration()
    return q


def _uniform(values: torch.Tensor, bits: int, observer) -> UniformQuantizer:
    q = UniformQuantizer(bits, "tensor", observer)
    q.calibrate_static(values)
    return q


def _mse(q, values: torch.Tensor) -> float:
    return float(((q(values) - values) ** 2).mean())


@pytest.fixture(scope="module")
def demo_model() -> torch.nn.Module:
    return load_model(ModelConfig()).model


def test_twin_uniform_beats_a_single_uniform_range_on_softmax_at_4_bits() -> None:
    g = torch.Generator().manual_seed(0)
    calib, test = ((torch.randn(64, 4, 32, 32, generator=g) * 2).softmax(-1) for _ in range(2))
    twin = _mse(_twin(calib, 4, "softmax"), test)
    for observer in (MinMaxObserver(), PercentileMseObserver(4)):
        assert twin < 0.8 * _mse(_uniform(calib, 4, observer), test)


def test_twin_uniform_beats_a_single_uniform_range_on_gelu_outputs_at_4_bits(demo_model) -> None:
    """On the demo ViT's real post-GELU activations (fc2 inputs): calibrated on calib, measured on test."""
    captured: dict[int, list[torch.Tensor]] = {}
    hooks = [block.mlp.fc2.register_forward_hook(lambda m, args, out, i=i: captured.setdefault(i, []).append(args[0]))
             for i, block in enumerate(demo_model.blocks)]
    with torch.no_grad():
        demo_model(load_demo_split("calib")[0][:64])
        demo_model(load_demo_split("test")[0][:64])
    for h in hooks:
        h.remove()
    for calib, test in captured.values():
        assert float(calib.min()) >= GELU_MINIMUM - 1e-6
        assert _mse(_twin(calib, 4, "gelu"), test) < 0.7 * _mse(_uniform(calib, 4, MinMaxObserver()), test)


finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(calib=arrays(np.float32, 64, elements=finite), x=arrays(np.float32, 32, elements=finite),
       bits=st.integers(2, 8), mode=st.sampled_from(["softmax", "gelu"]))
def test_codes_stay_within_b_bits_and_requantization_is_stable(calib, x, bits: int, mode: str) -> None:
    data = torch.from_numpy(calib)
    q = _twin(data.abs() if mode == "softmax" else data.clamp(min=GELU_MINIMUM), bits, mode)
    xt = torch.from_numpy(x)
    codes = q.quantize(xt)
    assert torch.equal(codes, codes.round())
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2 ** bits - 1
    once = q(xt)
    assert torch.equal(q(once), once)
    assert float(q(torch.zeros(3)).abs().max()) == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mode", ["softmax", "gelu"])
def test_integer_form_round_trips(bits: int, mode: str) -> None:
    """Codes decoded with integer_form() constants alone reproduce the fake-quant values exactly."""
    g = torch.Generator().manual_seed(bits)
    if mode == "softmax":
        values = (torch.randn(16, 2, 24, 24, generator=g) * 3).softmax(-1)
    else:
        values = torch.nn.functional.gelu(torch.randn(64, 96, generator=g) * 1.5)
    q = _twin(values, bits, mode)
    codes, fake = q.quantize(values), q(values)
    form = q.integer_form()
    assert form["format"] == "twin_uniform" and form["bits"] == bits and form["code_max"] == 2 ** bits - 1
    assert float(form["fine_step"]) * 2 ** form["shift"] == float(form["ranges"][0 if mode == "gelu" else 1]["step"])
    by_range, by_shift = torch.full_like(fake, float("nan")), torch.full_like(fake, float("nan"))
    for r in form["ranges"]:
        inside = (codes >= r["code_min"]) & (codes <= r["code_max"])
        assert torch.equal(inside, (codes.long() >> form["select_bit"]) == (r["code_min"] >> form["select_bit"]))
        level = codes - r["zero_point"]
        by_range = torch.where(inside, level * r["step"], by_range)
        aligned = level * 2 ** form["shift"] if r["coarse"] else level  # one accumulator, after a shift
        by_shift = torch.where(inside, aligned * form["fine_step"], by_shift)
    assert torch.equal(by_range, fake)
    assert torch.equal(by_shift, fake)
    # Both ranges are in use on these distributions.
    assert {bool(c) for c in (codes >= 2 ** (bits - 1)).unique()} == {True, False}


def _searched_layer_count(qmodel: QuantModel) -> int:
    gemms = sum(isinstance(m, (QuantLinear, QuantConv2d)) for m in qmodel.model.modules())
    return gemms + 2 * sum(hasattr(m, "probs_q") for m in qmodel.model.modules())


@pytest.fixture(scope="module")
def searched(demo_model):
    """(qmodel, distances before the search, after it, parameters before) on the demo at W4A4."""
    batches = [b for b in load_demo_split("calib")[0][:64].split(32)]
    qmodel = QuantModel(demo_model, build_recipe("ptq4vit", QuantConfig(ptq4vit=FAST)), 4, 4)
    qmodel.calibrate(batches)
    state = {k: v.clone() for k, v in qmodel.state_dict().items()}
    before = hessian_distances(qmodel, batches, FAST)
    hessian_search(qmodel, demo_model, batches, FAST)
    return qmodel, before, hessian_distances(qmodel, batches, FAST), state


def test_hessian_search_never_increases_and_lowers_the_layer_distances(searched) -> None:
    qmodel, before, after, _ = searched
    assert set(before) == set(after) and len(before) == _searched_layer_count(qmodel) == 26
    assert "blocks.0.attn.q@k" in before and "blocks.3.attn.probs@v" in before
    for name in before:
        assert after[name] <= before[name] * (1 + 1e-5), name
    assert sum(after.values()) < 0.8 * sum(before.values())


def test_hessian_search_changes_only_static_quantizer_steps(searched) -> None:
    qmodel, _, _, state = searched
    changed = {k for k, v in qmodel.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(k.rsplit(".", 1)[1] in ("scale", "step", "shift") for k in changed)
    images = load_demo_split("test")[0][:16]
    with torch.no_grad():
        together = qmodel(images)
        alone = torch.cat([qmodel(images[i:i + 1]) for i in range(len(images))])
    assert torch.allclose(alone, together, atol=1e-4, rtol=1e-4)


def test_search_covers_swin_window_attention_and_patch_merging() -> None:
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4, img_size=16,
                             patch_size=2, window_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2]).eval()
    batches = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))]
    tiny = Ptq4vitConfig(candidates=6, rounds=1, images=None)
    qmodel = QuantModel(swin, build_recipe("ptq4vit", QuantConfig(ptq4vit=tiny)), 4, 4)
    qmodel.calibrate(batches)
    before = hessian_distances(qmodel, batches, tiny)
    hessian_search(qmodel, swin, batches, tiny)
    after = hessian_distances(qmodel, batches, tiny)
    assert len(before) == _searched_layer_count(qmodel)
    assert any(name.endswith("attn.q@k") for name in before) and any("reduction" in name for name in before)
    assert all(after[name] <= before[name] * (1 + 1e-5) for name in before)


def test_ptq4vit_runs_through_the_pipeline(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "p.yaml", {
        "data": {"calib_images": 16, "eval_images": 32},
        "quant": {"methods": ["ptq4vit"], "bits": ["w4a4"],
                  "ptq4vit": {"candidates": 8, "rounds": 1, "images": 16, "hessian": True}},
        "out": str(tmp_path / "runs"),
    }))
    entry = json.loads((run_experiment(cfg) / "results.json").read_text())["results"][0]
    assert entry["method"] == "ptq4vit" and entry["top1"] is not None and entry["sqnr_db"] > 8.0


@pytest.mark.parametrize("section, fragment", [
    ({"candidates": 0}, "quant.ptq4vit.candidates"),
    ({"rounds": -1}, "quant.ptq4vit.rounds"),
    ({"images": 0}, "quant.ptq4vit.images"),
    ({"alpha": 1.5, "beta": 1.2}, "quant.ptq4vit.alpha"),
    ({"hessain": True}, "did you mean 'hessian'"),
])
def test_bad_ptq4vit_settings_name_the_key(tmp_path: Path, section: dict, fragment: str) -> None:
    with pytest.raises(UserInputError, match=fragment.replace(".", r"\.")):
        load_config(write_config(tmp_path / "bad.yaml", {"quant": {"ptq4vit": section}}))
