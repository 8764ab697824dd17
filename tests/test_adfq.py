"""ADFQ-ViT components: PPOQ, SLQ, the log quantizer's integer form, AdaRound and ASMO."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from adfq_sim.data.demo import load_demo_split
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.quant.adaround import AdaRoundWeight
from adfq_sim.quant.quantizers import GELU_MINIMUM
from adfq_sim.quant.asmo import AsmoSettings, _capture, _inputs, asmo_units, optimize_unit
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.model import QuantModel
from adfq_sim.formats import OUTLIER_MAX
from adfq_sim.quant.options import AdfqConfig, QuantConfig
from adfq_sim.quant.ppoq import PerPatchOutlierQuantizer
from adfq_sim.quant.quantizers import LogQuantizer, UniformQuantizer
from adfq_sim.quant.recipes import spec
from conftest import calibrated


def _post_ln_like(seed: int = 0) -> torch.Tensor:
    """[B, N, C] activations with per-token spreads, two outlier channels and one outlier token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 17, 64, generator=g) * torch.linspace(0.2, 1.5, 17)[None, :, None]
    x[:, :, 7] = 12.0 + torch.rand(32, 17, generator=g)   # systematic outlier channel
    x[:, :, 21] = -9.0 * torch.rand(32, 17, generator=g) - 6.0
    x[:, 0, :8] *= 20.0                                    # an outlier-heavy token (the class token)
    return x


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@pytest.mark.parametrize("bits", [4, 6])
def test_ppoq_beats_per_tensor_on_planted_outliers(bits: int) -> None:
    calib, test = _post_ln_like(0), _post_ln_like(1)
    ppoq = calibrated(PerPatchOutlierQuantizer(bits, alpha=5.0), calib)
    per_tensor = calibrated(spec("uniform", observer="search").build(bits), calib)
    assert _mse(ppoq(test), test) < _mse(per_tensor(test), test) / 10
    assert ppoq.scale.shape == (1, 17, 1)
    assert 0.02 < ppoq.calib_outlier_ratio < 0.1


def test_ppoq_outlier_paths() -> None:
    calib, x = _post_ln_like(0), _post_ln_like(2)
    exact = calibrated(PerPatchOutlierQuantizer(4, 5.0, "float"), calib)
    int16 = calibrated(PerPatchOutlierQuantizer(4, 5.0, "int16"), calib)
    mask = x.abs() > 5.0
    assert mask.any()
    # float outliers pass exactly; int16 outliers are within half their outlier step, a power-of-two
    # fraction of their token's step, fine enough that they cost nothing next to the dense error.
    assert torch.equal(exact(x)[mask], x[mask])
    step = int16.outlier_step().expand_as(x)[mask]
    assert bool(((int16(x)[mask] - x[mask]).abs() <= step / 2 + 1e-6).all())
    assert _mse(int16(x), x) < 1.01 * _mse(exact(x), x)
    # The dense codes hold the zero-point at outlier positions (the value 0).
    codes = int16.quantize(x)
    assert torch.equal(codes[mask], int16.zero_point.expand_as(x)[mask])
    assert int(int16.outlier_codes(x)[mask].abs().max()) <= OUTLIER_MAX
    # Eval counters: every outlier of this tensor counted once.
    int16.reset_counters()
    int16(x)
    assert int16.outlier_count == int(mask.sum()) and int16.element_count == x.numel()


def test_ppoq_refuses_another_token_count() -> None:
    q = calibrated(PerPatchOutlierQuantizer(4, 5.0), _post_ln_like(0))
    with pytest.raises(ValueError, match="token shape"):
        q(torch.randn(2, 9, 64))


def test_gelu_minimum_bounds_every_gelu_output() -> None:
    x = torch.linspace(-8, 8, 2_000_001, dtype=torch.float64)
    y = F.gelu(x)
    assert float(y.min()) >= GELU_MINIMUM - 1e-15
    assert float(y.min()) == pytest.approx(GELU_MINIMUM, abs=1e-12)


def _demo_post_gelu() -> list[torch.Tensor]:
    """The demo ViT's real fc2 inputs (post-GELU), one tensor per block."""
    model = load_model(ModelConfig()).model
    acts: list[torch.Tensor] = []
    hooks = [b.mlp.fc2.register_forward_hook(lambda m, a, o: acts.append(a[0])) for b in model.blocks]
    with torch.no_grad():
        model(load_demo_split("calib")[0][:128])
    for h in hooks:
        h.remove()
    return acts


def test_slq_beats_uniform_on_gelu_outputs_at_4_bits() -> None:
    g = torch.Generator().manual_seed(0)
    synthetic = F.gelu(torch.randn(64, 17, 256, generator=g) * 1.5 - 0.5)
    for x in [synthetic, *_demo_post_gelu()]:
        slq = calibrated(spec("slq", base="sqrt2").build(4), x)
        uniform = calibrated(spec("uniform", observer="search").build(4), x)
        assert _mse(slq(x), x) < _mse(uniform(x), x)
        codes = slq.quantize(x)
        assert int(codes.min()) >= 0 and int(codes.max()) <= 15


def _from_integer_form(form: dict, codes: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantize codes with nothing but the exported integer form (an independent reading of it)."""
    if form["format"] in ("uniform", "ppoq"):
        values = (codes - form["zero_point"].float()) * form["scale"]
        if form["format"] == "ppoq":
            mask = x.abs() > form["alpha"]
            if form["outliers"] == "int16":
                step = form["scale"] / 2 ** form["outlier_shift"]
                sparse = torch.clamp(torch.floor(x / step + 0.5), form["outlier_code_min"],
                                     form["outlier_code_max"]) * step
            else:
                sparse = x
            values = torch.where(mask, sparse, values)
        return values
    assert form["format"] == "log"
    exponent = {"sqrt2": 0.5, "2": 1.0}[form["base"]]
    level = form["delta"] * torch.exp2(-codes * exponent)
    return torch.where(codes == form["zero_code"], torch.zeros_like(level), level) + form["shift"]


@pytest.mark.parametrize("make", [
    lambda: UniformQuantizer(4, "tensor", __import__("adfq_sim.quant.observers", fromlist=["x"]).MinMaxObserver()),
    lambda: PerPatchOutlierQuantizer(4, 5.0, "int16"),
    lambda: PerPatchOutlierQuantizer(5, 5.0, "float"),
    lambda: LogQuantizer(4, "sqrt2"),
    lambda: LogQuantizer(3, "2"),
    lambda: spec("slq", base="sqrt2").build(4),
])
def test_integer_form_round_trips(make) -> None:
    quantizer = make()
    x = _post_ln_like(3)
    if isinstance(quantizer, LogQuantizer):
        x = torch.softmax(x, dim=-1) if quantizer.shift == 0 else F.gelu(x)
    calibrated(quantizer, x)
    form = quantizer.integer_form()
    codes = quantizer.quantize(x)
    assert int(codes.min()) >= form["code_min"] and int(codes.max()) <= form["code_max"]
    assert torch.equal(_from_integer_form(form, codes, x), quantizer(x))


def test_log_quantizer_levels_and_zero_code() -> None:
    q = calibrated(LogQuantizer(4, "sqrt2"), torch.tensor([1.0, 0.5, 0.01]))
    codes = q.quantize(torch.tensor([1.0, 2 ** -0.5, 0.5, 0.0, 1e-9]))
    assert codes.tolist() == [0, 1, 2, 15, 15]
    assert q.dequantize(torch.tensor([15.0])).item() == 0.0


def test_adaround_soft_start_and_on_grid_result() -> None:
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    q = UniformQuantizer(4, "channel", __import__("adfq_sim.quant.observers", fromlist=["x"]).MinMaxObserver())
    q.calibrate_static(w)
    rounder = AdaRoundWeight(q, w)
    # It starts at the float weight wherever the weight lies inside the representable range (the
    # rounded zero-point can put a channel's extreme up to half a step outside it).
    inside = (w / q.scale + q.zero_point >= 0) & (w / q.scale + q.zero_point <= q.qmax)
    assert torch.allclose(rounder(w)[inside], w[inside], atol=2e-4 * float(q.scale.max()))
    hard = rounder.hard_weight()
    assert torch.allclose(q(hard), hard, atol=1e-6)  # on the quantizer's grid: re-quantizing is exact
    assert bool(((hard - w).abs() <= q.scale + 1e-6).all())  # floor or ceil, never further


@pytest.fixture(scope="module")
def demo_w4a4():
    model = load_model(ModelConfig()).model
    calib = load_demo_split("calib")[0][:64]
    quant = QuantConfig(adfq=dataclasses.replace(AdfqConfig(), asmo=False))
    qmodel = QuantModel(model, build_recipe("adfq", quant), 4, 4)
    qmodel.calibrate([calib])
    return model, qmodel, calib


@pytest.mark.parametrize("unit_name", ["blocks.1.attn", "blocks.3.mlp", "head"])
def test_asmo_lowers_the_module_reconstruction_loss(demo_w4a4, unit_name: str) -> None:
    model, qmodel, calib = demo_w4a4
    assert unit_name in asmo_units(qmodel.model)
    for p in qmodel.parameters():
        p.requires_grad_(False)
    unit = qmodel.model.get_submodule(unit_name)
    q_calls, _ = _capture(qmodel.model, unit, calib, 32, with_output=False)
    fp_calls, fp_out = _capture(model, model.get_submodule(unit_name), calib, 32, with_output=True)
    settings = dataclasses.replace(AsmoSettings.from_config(AdfqConfig()), iters=80)
    report = optimize_unit(unit, _inputs(q_calls), _inputs(fp_calls), fp_out, q_calls[0][1], settings,
                           torch.Generator().manual_seed(0), unit_name)
    assert report["mse_after"] < 0.97 * report["mse_before"]
    # The learned rounding is baked in: weights sit exactly on their quantizer's grid.
    for module in unit.modules():
        if hasattr(module, "weight_q"):
            assert torch.allclose(module.weight_q(module.weight), module.weight, atol=1e-6)


def test_asmo_units_in_forward_order(demo_w4a4) -> None:
    _, qmodel, _ = demo_w4a4
    assert asmo_units(qmodel.model) == ["patch_embed.proj"] + [
        f"blocks.{i}.{part}" for i in range(4) for part in ("attn", "mlp")] + ["head"]


def test_ablation_switches_change_the_quantizers() -> None:
    def kinds(**switches) -> dict:
        recipe = build_recipe("adfq", QuantConfig(adfq=dataclasses.replace(AdfqConfig(), **switches)))
        return {role: recipe.activations[role].kind for role in ("qkv_in", "fc1_in", "fc2_in", "probs")}

    assert kinds() == {"qkv_in": "ppoq", "fc1_in": "ppoq", "fc2_in": "slq", "probs": "log"}
    assert kinds(ppoq=False, slq=False) == {"qkv_in": "uniform", "fc1_in": "uniform", "fc2_in": "uniform",
                                            "probs": "log"}
    assert build_recipe("adfq", QuantConfig(adfq=dataclasses.replace(AdfqConfig(), asmo=False))).optimize is None
    assert build_recipe("adfq", QuantConfig()).optimize is not None
