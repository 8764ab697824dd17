"""RepQ-ViT: the LayerNorm fold is FP32-exact and equalises channel ranges; the method runs end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from adfq_sim.config import load_config
from adfq_sim.data.demo import load_demo_split
from adfq_sim.errors import UserInputError
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.pipeline import run_experiment
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.observers import MinMaxObserver, uniform_mse
from adfq_sim.quant.options import QuantConfig
from adfq_sim.quant.quantizers import UniformQuantizer
from adfq_sim.quant.observers import PercentileMseObserver
from adfq_sim.quant.repq import REPQ_PERCENTILES, reparameterize
from conftest import tiny_vit, write_config


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
    calib, _ = load_demo_split("calib")
    test, _ = load_demo_split("test")
    return load_model(ModelConfig()).model, [calib[:64], calib[64:128]], test[:200]


@pytest.fixture(scope="module")
def folded_demo(demo) -> nn.Module:
    model, calib, _ = demo
    return reparameterize(model, calib)


def _post_ln(model: nn.Module, images: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each norm1 / norm2 output, flattened to [tokens, channels]."""
    outputs = {}

    def keep(name: str):
        return lambda _module, _inputs, out: outputs.__setitem__(name, out.reshape(-1, out.shape[-1]))

    hooks = [m.register_forward_hook(keep(name)) for name, m in model.named_modules()
             if name.endswith(("norm1", "norm2"))]
    with torch.no_grad():
        model(torch.cat(images) if isinstance(images, list) else images)
    for hook in hooks:
        hook.remove()
    return outputs


def _next_linear(model: nn.Module, norm_name: str) -> nn.Linear:
    block = model.get_submodule(norm_name.rpartition(".")[0])
    return block.attn.qkv if norm_name.endswith("norm1") else block.mlp.fc1


def test_fold_keeps_the_demo_fp32_output_and_leaves_the_caller_model_alone(demo, folded_demo) -> None:
    model, _, test = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected, got = model(test), folded_demo(test)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(folded_demo.blocks[0].norm1.weight, model.blocks[0].norm1.weight)


def test_fold_keeps_a_tiny_timm_vit_and_swin_fp32_output(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="adfq_sim")
    torch.manual_seed(0)
    # 24x24 images, 2x2 patches, windows of 4: stage 2 is 6x6 tokens, zero-padded to 8x8 after norm1.
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4, img_size=24,
                             patch_size=2, window_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2]).eval()
    for model, size in ((tiny_vit(), 32), (swin, 24)):
        gen = torch.Generator().manual_seed(1)
        calib, images = torch.randn(8, 3, size, size, generator=gen), torch.randn(6, 3, size, size, generator=gen)
        folded = reparameterize(model, [calib[:4], calib[4:]])
        with torch.no_grad():
            expected, got = model(images), folded(images)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # Swin's patch-merging norm folds into its reduction (which had no bias); where norm1's output is
    # zero-padded (the unshifted stage-2 block) only the scales fold, and the log says so.
    assert folded.layers[1].downsample.reduction.bias is not None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("repq: layers.1.blocks.0.norm1: only the channel scales")


def test_fold_aligns_every_channel_to_one_range(demo, folded_demo) -> None:
    """On the calibration images every channel spans the same range; on unseen images nearly so."""
    model, calib, test = demo
    for name, x in _post_ln(folded_demo, calib).items():
        lo, hi = x.amin(0), x.amax(0)
        width = float((hi - lo).mean())
        assert float((lo - lo.mean()).abs().max()) < 1e-4 * width, name
        assert float((hi - hi.mean()).abs().max()) < 1e-4 * width, name
    float_ln, folded_ln = _post_ln(model, test), _post_ln(folded_demo, test)
    for name in float_ln:
        spread = [float(w.std() / w.mean()) for w in (float_ln[name].amax(0) - float_ln[name].amin(0),
                                                      folded_ln[name].amax(0) - folded_ln[name].amin(0))]
        assert spread[1] < 0.4 * spread[0], (name, spread)


def _quantized_gemm_error(model: nn.Module, norm_name: str, calib: dict, test: dict, bits: int) -> float:
    """Relative error of the next linear layer's output with its input quantized per tensor (min/max)."""
    q = UniformQuantizer(bits, "tensor", MinMaxObserver())
    q.calibrate_static(calib[norm_name])
    linear = _next_linear(model, norm_name)
    with torch.no_grad():
        exact, quantized = linear(test[norm_name]), linear(q(test[norm_name]))
    return float(((quantized - exact) ** 2).sum() / (exact ** 2).sum())


@pytest.mark.parametrize("bits", [4, 6])
def test_per_tensor_quantization_after_the_fold_has_lower_error(demo, folded_demo, bits: int) -> None:
    model, calib, test = demo
    errors = {}
    for label, m in (("float", model), ("folded", folded_demo)):
        calib_ln, test_ln = _post_ln(m, calib), _post_ln(m, test)
        errors[label] = [_quantized_gemm_error(m, name, calib_ln, test_ln, bits) for name in calib_ln]
    assert all(f < p for f, p in zip(errors["folded"], errors["float"])), errors
    assert sum(errors["folded"]) < 0.7 * sum(errors["float"]), errors


def test_fold_is_refused_where_the_norm_does_not_feed_the_linear_layer() -> None:
    class PostNormBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(8), nn.Module()
            self.attn.qkv = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm1(self.attn.qkv(x))

    torch.manual_seed(0)
    with pytest.raises(UserInputError, match=r"folding norm1 changes the float output"):
        reparameterize(PostNormBlock(), [torch.randn(4, 5, 8) * 3])
    with pytest.raises(UserInputError, match="no LayerNorm feeding"):
        reparameterize(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)])


def test_weight_search_clips_an_outlier_channel_on_its_own() -> None:
    w = torch.randn(6, 4096, generator=torch.Generator().manual_seed(0))
    w[2, 0] = 40.0
    observer = PercentileMseObserver(4, REPQ_PERCENTILES)
    observer.observe(w, (1,))
    lo, hi = observer.range()
    assert lo.shape == hi.shape == (6, 1)
    assert float(hi[2]) < 10.0  # the outlier does not set channel 2's range
    others = [0, 1, 3, 4, 5]
    assert bool((hi[others] > 0.8 * w[others].amax(1, keepdim=True)).all())  # nor the other channels'
    chosen = uniform_mse(w, lo, hi, 4)
    full = uniform_mse(w, w.amin(1, keepdim=True), w.amax(1, keepdim=True), 4)
    assert float(chosen[2]) < float(full[2])


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_log_sqrt2_codes_dequantize_from_the_integer_form_alone(bits: int) -> None:
    probs_q = build_recipe("repq", QuantConfig()).activation("probs", bits)
    gen = torch.Generator().manual_seed(bits)
    probs = (torch.randn(16, 2, 17, 17, generator=gen) * 3).softmax(-1)
    probs_q.begin_calibration()
    probs_q(probs)
    probs_q.end_calibration()
    x = (torch.randn(8, 2, 17, 17, generator=gen) * 3).softmax(-1)
    x[..., -1] = 0.0  # a masked key: exactly zero
    codes, fake = probs_q.quantize(x), probs_q(x)
    form = probs_q.integer_form()
    assert form["format"] == "log" and form["base"] == "sqrt2" and form["shift"] == 0.0
    assert torch.equal(codes, codes.round())
    assert form["code_min"] <= int(codes.min()) <= int(codes.max()) <= form["code_max"]
    assert int((codes < form["zero_code"]).sum()) > 0 and int((codes == form["zero_code"]).sum()) > 0
    # The integer contract's reading: delta * 2^-(q // 2), times 1/sqrt2 for odd q; the zero code is 0.
    c = codes.long()
    value = form["delta"] * torch.ldexp(torch.ones_like(x), -(c // 2)) * torch.where(c % 2 == 1, 2 ** -0.5, 1.0)
    value = torch.where(c == form["zero_code"], torch.zeros_like(value), value) + form["shift"]
    assert torch.allclose(value, fake, rtol=1e-6, atol=0.0)


def test_repq_runs_through_the_pipeline(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "repq.yaml", {
        "data": {"calib_images": 32, "eval_images": 64},
        "quant": {"methods": ["repq"], "bits": ["w4a4"]},
        "out": str(tmp_path / "runs"),
    }))
    (entry,) = json.loads((run_experiment(cfg) / "results.json").read_text())["results"]
    assert entry["method"] == "repq" and entry["top1"] > 80.0 and entry["sqnr_db"] > 8.0
