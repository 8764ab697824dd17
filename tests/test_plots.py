"""Report figures: quantizer levels agree with the real quantizers; every figure renders from a small
synthetic results dict, shows what it claims (Pareto front, layer totals, outlier notes, mismatches) and
saves to byte-identical PNG / SVG files."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.text import Text
from torch.nn import functional as F

from adfq_sim import formats
from adfq_sim.distributions import _jsonable
from adfq_sim.quant.observers import MinMaxObserver
from adfq_sim.quant.ppoq import PerPatchOutlierQuantizer
from adfq_sim.quant.quantizers import GELU_MINIMUM, LogQuantizer, UniformQuantizer
from adfq_sim.quant.twin_uniform import TwinUniformQuantizer
from hw_models.cost import COMPONENTS
from conftest import calibrated
from reports import plots, report, summary

ACCELERATOR = "npu"
TOKENS = 5


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _uniform_tensor():
    return calibrated(UniformQuantizer(4, "tensor", MinMaxObserver()), _randn(64) * 2 + 0.5, _randn(64, seed=1))


def _uniform_channel():
    quantizer = UniformQuantizer(3, "channel", MinMaxObserver())
    quantizer.calibrate_static(_randn(6, 16) * torch.linspace(0.1, 2.0, 6)[:, None])
    return quantizer


def _ppoq():
    x = _randn(4, TOKENS, 16) * torch.linspace(0.5, 2.0, TOKENS)[None, :, None]
    x[0, 1, 3] = 9.0  # one outlier beyond alpha
    return calibrated(PerPatchOutlierQuantizer(4, alpha=5.0), x)


def _log(base: str, bits: int):
    return lambda: calibrated(LogQuantizer(bits, base, shift=GELU_MINIMUM), F.gelu(_randn(256) * 2))


def _twin(mode: str):
    if mode == "softmax":
        return lambda: calibrated(TwinUniformQuantizer(4, "softmax"), torch.softmax(_randn(8, 16) * 3, dim=-1))
    return lambda: calibrated(TwinUniformQuantizer(4, "gelu", lower=GELU_MINIMUM), F.gelu(_randn(256) * 2))


def _all_codes(quantizer, form: dict) -> torch.Tensor:
    """Every code, shaped so dequantize broadcasts it to [rows, codes] (or [codes])."""
    codes = torch.arange(form["code_min"], form["code_max"] + 1, dtype=torch.float32)
    if form["format"] == "ppoq":
        return quantizer.dequantize(codes.reshape(1, 1, -1)).reshape(-1, codes.numel())
    if form.get("granularity") == "channel":
        return quantizer.dequantize(codes.reshape(1, -1))
    return quantizer.dequantize(codes).reshape(1, -1)


@pytest.mark.parametrize("make, rows", [
    (_uniform_tensor, 1), (_uniform_channel, 6), (_ppoq, TOKENS), (_log("sqrt2", 4), 1), (_log("2", 5), 1),
    (_twin("softmax"), 1), (_twin("gelu"), 1)],
    ids=["uniform-tensor", "uniform-channel", "ppoq", "log-sqrt2", "log-2", "twin-softmax", "twin-gelu"])
def test_quantizer_levels_are_the_quantizers_dequantized_codes(make, rows: int) -> None:
    quantizer = make()
    form = _jsonable(quantizer.integer_form())
    levels = formats.levels(form)
    expected = _all_codes(quantizer, form).double().numpy()
    assert levels.shape[0] == rows == expected.shape[0]
    for got, want in zip(levels, expected):
        # One level per code, sorted; twin-uniform's two ranges both hold 0 (a union). Not np.unique for the
        # others: float32 dequantize merges the log levels that lie within float32 epsilon of the shift.
        want = np.unique(want) if form["format"] == "twin_uniform" else np.sort(want)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
        assert np.all(np.diff(got) > 0)


def test_quantizer_levels_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown quantizer format"):
        formats.levels({"format": "fp8", "code_min": 0, "code_max": 3})


# A synthetic results.json: 2 methods x 2 bit-widths on one accelerator, 2 transformer blocks.
ENERGY = {("minmax", "w8a8"): 2.0, ("adfq", "w8a8"): 1.8, ("minmax", "w4a4"): 1.0, ("adfq", "w4a4"): 0.9}
ACCURACY = {("minmax", "w8a8"): 97.9, ("adfq", "w8a8"): 98.0, ("minmax", "w4a4"): 90.0, ("adfq", "w4a4"): 97.5}
LN_VALUES = np.random.default_rng(0).standard_normal(20000) * 1.5
GELU_VALUES = np.asarray(F.gelu(torch.from_numpy(np.random.default_rng(1).standard_normal(20000) * 1.5)))


def _histogram(values: np.ndarray, tensor: str, quantizer: str) -> dict:
    counts, edges = np.histogram(values, bins=128, range=(values.min(), values.max()))
    return {"tensor": tensor, "quantizer": quantizer, "values": int(values.size), "min": float(values.min()),
            "max": float(values.max()), "edges": edges.tolist(), "counts": counts.tolist()}


def _layers(scale: float) -> list[dict]:
    def layer(name: str, kind: str, **energy: float) -> dict:
        return {"name": name, "kind": kind, "energy_pj": {c: scale * energy.get(c, 0.0) for c in COMPONENTS}}
    layers = [layer("patch_embed", "dense", dense_macs=300.0, sram=900.0)]
    for b in range(2):
        layers += [layer(f"blocks.{b}.norm1", "vector", vector=40.0),
                   layer(f"blocks.{b}.attn.qkv", "dense", dense_macs=2000.0, sram=3000.0, outliers=50.0),
                   layer(f"blocks.{b}.mlp.gelu", "vector", vector=60.0),
                   layer(f"blocks.{b}.mlp.fc2", "shift", shift_adds=800.0, sram=2500.0, dram=400.0)]
    return layers + [layer("norm", "vector", vector=10.0), layer("head", "dense", dense_macs=100.0, sram=200.0)]


def _forms(method: str, bits: int) -> dict:
    qmax = (1 << bits) - 1
    if method == "minmax":
        return {"post_layernorm": {"format": "uniform", "bits": bits, "granularity": "tensor", "code_min": 0,
                                   "code_max": qmax, "scale": 12.0 / qmax, "zero_point": float(qmax // 2)},
                "post_gelu": {"format": "uniform", "bits": bits, "granularity": "tensor", "code_min": 0,
                              "code_max": qmax, "scale": 6.0 / qmax, "zero_point": 1.0}}
    return {"post_layernorm": {"format": "ppoq", "bits": bits, "granularity": "token", "code_min": 0,
                               "code_max": qmax, "scale": [s / qmax for s in (6.0, 7.0, 8.0, 6.5, 7.5)],
                               "zero_point": [float(qmax // 2)] * TOKENS, "alpha": 4.0, "outliers": "int16",
                               "outlier_shift": 4, "outlier_code_min": -32768, "outlier_code_max": 32767},
            "post_gelu": {"format": "log", "bits": bits, "base": "sqrt2", "code_min": 0, "code_max": qmax,
                          "zero_code": qmax, "delta": 5.0, "shift": GELU_MINIMUM}}


def _entry(method: str, bits: str, mismatches: int) -> dict:
    n = int(bits[1])
    exported = (method, bits) != ("minmax", "w4a4")  # one entry without an integer program (no cost)
    tensors = ["embed_in"] + [f"blocks.{b}.{t}" for b in range(2) for t in
                              (["qkv_in"] + (["qkv_in_outliers"] if method == "adfq" else []) + ["fc2_in"])]
    layers = [{"op": name.rsplit(".", 1)[0] if "." in name else "", "tensor": name.rsplit(".", 1)[-1],
               "format": "uniform", "elements": 512, "mismatches": mismatches if i == 2 else 0, "max_abs_diff": 0}
              for i, name in enumerate(tensors)]
    energy = ENERGY[(method, bits)]
    return {
        "method": method, "bits": bits, "w_bits": n, "a_bits": n, "top1": ACCURACY[(method, bits)] + 0.1,
        "agreement": 99.0, "sqnr_db": 20.0,
        "outlier_ratio": {f"blocks.{b}.{layer}.act_q": {"calib": 0.001 * b, "eval": 0.002 * b}
                          for b in range(2) for layer in ("attn.qkv", "mlp.fc1")} if method == "adfq" else {},
        "quantizers": _forms(method, n),
        "integer_evaluation": {"exported": exported, "top1": ACCURACY[(method, bits)], "agreement": 99.0,
                               "verify": {"images": 4, "tensors": len(layers), "mismatches": mismatches,
                                          "layers": layers, "outliers": {}}} if exported else {"exported": False},
        "cost": {ACCELERATOR: {"energy_per_inference_uj": energy, "latency_ms": energy / 10, "area_mm2": 1.5,
                               "memory_bytes": {"weights": 1000.0 * n, "peak_activations": 512.0, "outliers": 0.0},
                               "layers": _layers(energy)}} if exported else None,
    }


def make_results() -> dict:
    return {
        "config": {"quant": {"methods": ["minmax", "adfq"], "bits": ["w8a8", "w4a4"],
                             "adfq": {"alpha_qkv": 4.0, "alpha_fc1": 4.0}},
                   "report": {"focus": None, "max_drop": 1.0}},
        "hardware": [{"name": ACCELERATOR}],
        "fp32": {"top1": 98.2},
        "distributions": {"block": "blocks.1", "images": 8,
                          "post_layernorm": _histogram(LN_VALUES, "blocks.1.norm1", "blocks.1.attn.qkv.act_q"),
                          "post_gelu": _histogram(GELU_VALUES, "blocks.1.mlp.act", "blocks.1.mlp.fc2.act_q")},
        "results": [_entry(m, b, mismatches=3 if (m, b) == ("adfq", "w4a4") else 0)
                    for b in ("w8a8", "w4a4") for m in ("minmax", "adfq")],
    }


def _entry_of(results: dict, method: str, bits: str) -> dict:
    return next(e for e in results["results"] if (e["method"], e["bits"]) == (method, bits))


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_figure_renders_and_saves_identical_png_and_svg(tmp_path: Path) -> None:
    results = make_results()
    entry = _entry_of(results, "adfq", "w4a4")
    figures = {f"cost_{q}": plots.accuracy_vs_cost(results, ACCELERATOR, q) for q in plots.QUANTITIES}
    figures |= {"layer_energy": plots.layer_energy(results, entry, ACCELERATOR),
                "distributions": plots.distributions(results, entry),
                "distributions_uniform": plots.distributions(results, _entry_of(results, "minmax", "w8a8")),
                "outlier_ratios": plots.outlier_ratios(results), "verification": plots.verification(results),
                "area": plots.accuracy_vs_area(results)}
    for stem, fig in figures.items():
        first = plots.save_figure(fig, tmp_path / "a", stem)
        second = plots.save_figure(fig, tmp_path / "b", stem)
        assert [p.name for p in first] == [f"{stem}.png", f"{stem}.svg"]
        width, height = _png_size(first[0].read_bytes())
        assert width > 200 and height > 200, stem
        assert first[1].read_bytes().lstrip().startswith(b"<?xml")
        for a, b in zip(first, second):
            assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("quantity", sorted(plots.QUANTITIES))
def test_accuracy_vs_cost_draws_the_pareto_front_and_the_recommendation(quantity: str) -> None:
    results = make_results()
    metric, _ = summary.accuracy_metric(results)
    costed = summary.costed(results, ACCELERATOR)
    assert len(costed) == 3  # the unexported entry is left out
    value = {"energy": lambda c: c["energy_per_inference_uj"], "memory": lambda c: summary.memory_bytes(c) / 1024,
             "latency": lambda c: c["latency_ms"]}[quantity]
    points = [(value(summary.cost_of(e, ACCELERATOR)), summary.deployed_accuracy(e, metric)) for e in costed]
    front = summary.pareto_front(points)
    fig = plots.accuracy_vs_cost(results, ACCELERATOR, quantity)
    ax = fig.axes[0]
    lines = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]
    assert ([points[i][0] for i in front], [points[i][1] for i in front]) in lines
    assert ([0, 1], [98.2, 98.2]) in lines  # the FP32 accuracy
    assert ax.get_xscale() == "linear"
    chosen = summary.recommended(results, ACCELERATOR)
    assert (chosen["method"], chosen["bits"]) == ("adfq", "w4a4")
    ring = max(ax.lines, key=lambda line: line.get_markersize())  # the largest marker circles the choice
    assert (list(ring.get_xdata()), list(ring.get_ydata())) == ([points[costed.index(chosen)][0]],
                                                                [points[costed.index(chosen)][1]])
    assert "lowest energy within\n1 point of FP32" in _texts(fig)


def test_accuracy_vs_cost_uses_a_log_axis_only_for_a_wide_range() -> None:
    results = make_results()
    _entry_of(results, "minmax", "w8a8")["cost"][ACCELERATOR]["energy_per_inference_uj"] = 100.0
    assert plots.accuracy_vs_cost(results, ACCELERATOR, "energy").axes[0].get_xscale() == "log"
    with pytest.raises(ValueError):
        plots.accuracy_vs_cost(results, ACCELERATOR, "area")


def test_accuracy_vs_area_puts_each_accelerator_in_a_column() -> None:
    """Each accelerator's entries at its area, its name on the axis; equal accuracies on a bigger accelerator
    are dominated, so the front holds only the smaller one's points."""
    results = make_results()
    results["hardware"].append({"name": "big"})
    for entry in summary.costed(results, ACCELERATOR):
        entry["cost"]["big"] = {**entry["cost"][ACCELERATOR], "area_mm2": 6.0}
    metric, _ = summary.accuracy_metric(results)
    fig = plots.accuracy_vs_area(results)
    ax = fig.axes[0]
    markers = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if line.get_markerfacecolor() == "none"]
    costed = summary.costed(results, ACCELERATOR)
    expected = [(area, summary.deployed_accuracy(e, metric)) for area in (1.5, 6.0) for e in costed]
    assert sorted(markers) == sorted(expected)
    front = summary.pareto_front(expected)
    assert {expected[i][0] for i in front} == {1.5}
    texts = _texts(fig)
    assert ACCELERATOR in texts and "big" in texts and f"Pareto front ({len(front)} of 6)" in texts


def test_accuracy_vs_cost_without_costs_says_so() -> None:
    results = make_results()
    for entry in results["results"]:
        entry["cost"] = None
    assert "no entry has a cost on npu" in _texts(plots.accuracy_vs_cost(results, ACCELERATOR, "energy"))


def test_layer_energy_bars_add_up_to_each_row_in_execution_order() -> None:
    results = make_results()
    entry = _entry_of(results, "adfq", "w8a8")
    rows = summary.layer_energy_rows(entry["cost"][ACCELERATOR])
    fig = plots.layer_energy(results, entry, ACCELERATOR)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [name for name, _ in rows]
    totals = np.zeros(len(rows))
    for bar in ax.patches:
        totals[round(bar.get_y() + bar.get_height() / 2)] += bar.get_width()
    np.testing.assert_allclose(totals, [sum(energy.values()) / 1000 for _, energy in rows])
    assert ax.yaxis_inverted()  # first layer on top
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["dense MACs", "shift-adds", "outlier path", "vector unit", "PE registers", "SRAM", "DRAM"]
    assert "1.8 µJ" in ax.get_title()


def test_distributions_estimate_the_values_beyond_alpha() -> None:
    results = make_results()
    fig = plots.distributions(results, _entry_of(results, "adfq", "w4a4"))
    match = re.search(r"≈([\d,]+) values", _texts(fig))
    assert match is not None
    exact = int((np.abs(LN_VALUES) > 4.0).sum())
    assert abs(int(match.group(1).replace(",", "")) - exact) <= max(3, 0.25 * exact)
    results["results"][1]["quantizers"]["post_layernorm"]["alpha"] = 50.0
    assert "±alpha = ±50 (dashed): no value beyond it" in _texts(plots.distributions(results, results["results"][1]))


def test_outlier_ratios_bars_and_all_zero_note() -> None:
    results = make_results()
    fig = plots.outlier_ratios(results)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["blocks.0 qkv", "blocks.0 fc1", "blocks.1 qkv",
                                                              "blocks.1 fc1"]
    assert max(bar.get_height() for bar in ax.patches) == pytest.approx(0.2)  # eval ratio 0.002 in %
    assert "No value exceeded" not in _texts(fig)
    for entry in results["results"]:
        for ratio in entry["outlier_ratio"].values():
            ratio["eval"] = 0.0
    assert "alpha_qkv = 4" in _texts(plots.outlier_ratios(results))
    for entry in results["results"]:
        entry["outlier_ratio"] = {}
    assert "no entry has outlier-aware quantizers" in _texts(plots.outlier_ratios(results))


def test_verification_marks_mismatches_and_keeps_execution_order() -> None:
    results = make_results()
    fig = plots.verification(results)
    ax = fig.axes[0]
    columns = [t.get_text() for t in ax.get_xticklabels()]
    assert columns == ["embed_in", "blocks.0.qkv_in", "blocks.0.qkv_in_outliers", "blocks.0.fc2_in",
                       "blocks.1.qkv_in", "blocks.1.qkv_in_outliers", "blocks.1.fc2_in"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["minmax W8A8", "adfq W8A8", "adfq W4A4"]
    assert [t.get_text() for t in ax.texts] == ["3"]
    assert ax.texts[0].get_position() == (2, 2)  # adfq W4A4 row, its third tensor
    # minmax's program verifies 5 tensors, adfq's 7 (with the outlier lists)
    assert "3 mismatched codes over 19 tensors (3 entries, 5-7 tensors each), 4 images" in ax.get_title(loc="left")


def test_markers_share_one_size_and_coinciding_entries_ring_out() -> None:
    """Every entry's marker is the same size whatever its method; a second entry at the same point is a
    larger ring around the first, so both stay visible."""
    results = make_results()
    same = _entry_of(results, "adfq", "w8a8")
    same["cost"][ACCELERATOR] = dict(_entry_of(results, "minmax", "w8a8")["cost"][ACCELERATOR])
    same["integer_evaluation"]["top1"] = _entry_of(results, "minmax", "w8a8")["integer_evaluation"]["top1"]
    ax = plots.accuracy_vs_cost(results, ACCELERATOR, "energy").axes[0]
    markers = [line for line in ax.lines if line.get_markerfacecolor() == "none" and len(line.get_xdata()) == 1
               and line.get_markeredgecolor() != "black"]
    assert len(markers) == 3  # the unexported entry has no point
    sizes = sorted(line.get_markersize() for line in markers)
    assert sizes == [plots.MARKER_SIZE, plots.MARKER_SIZE, plots.MARKER_SIZE + plots.RING_STEP]


def test_a_method_keeps_its_colour_whatever_the_config_order() -> None:
    results = make_results()
    reordered = make_results()
    reordered["config"]["quant"]["methods"] = ["adfq", "minmax"]
    assert plots._method_colours(results) == plots._method_colours(reordered)
    alone = make_results()
    alone["config"]["quant"]["methods"] = ["adfq"]
    assert plots._method_colours(alone)["adfq"] == plots._method_colours(results)["adfq"]


def test_a_run_with_nothing_exported_makes_no_pass_like_claim() -> None:
    """Nothing verified and nothing priced: no cost or verification plot, no "0 mismatched codes" verdict,
    and the shared reason for not exporting said once."""
    results = make_results()
    for entry in results["results"]:
        entry["integer_evaluation"] = {"exported": False, "reason": "Swin is not supported"}
        entry["cost"] = None
    specs = report.plot_specs(results)
    assert not [s.stem for s in specs if s.stem.startswith("accuracy_vs") or s.stem in ("verification", "layer_energy")]
    text = "\n".join(report._summary_bullets(results))
    assert "mismatched codes" not in text and "**0**" not in text
    assert text.count("Swin is not supported") == 1 and "nothing was verified" in text


def test_the_summary_says_when_no_configuration_is_within_max_drop() -> None:
    results = make_results()
    results["hardware"] = [{"name": ACCELERATOR, "pe_array": {"rows": 16, "cols": 16, "dataflow": "output_stationary"},
                            "clock_mhz": 500, "sram": [{"size_kib": 512}]}]
    for entry in results["results"]:
        if entry["cost"]:
            entry["cost"][ACCELERATOR]["effective_tops_per_w"] = 1.0
            entry["cost"][ACCELERATOR]["energy_uj"] = {"sram": 1.0}
    results["config"]["report"]["max_drop"] = 0.0
    results["fp32"]["top1"] = 100.0
    assert "No configuration is within 0 points of FP32" in "\n".join(report._summary_bullets(results))
    results["config"]["report"]["max_drop"] = 50.0
    assert "No configuration is within" not in "\n".join(report._summary_bullets(results))


def test_quality_flags_name_what_falls_behind() -> None:
    results = make_results()
    assert summary.quality_flags(results) == []
    _entry_of(results, "adfq", "w8a8")["sqnr_db"] = 20.0 - summary.LOW_SQNR_DB - 0.01  # minmax w8a8 has 20.0
    _entry_of(results, "minmax", "w4a4")["agreement"] = 99.0 - summary.LOW_AGREEMENT_POINTS + 0.01  # not yet
    _entry_of(results, "adfq", "w4a4")["optimization"] = [
        {"unit": "ASMO blocks.0.attn", "mse_before": 1.0, "mse_after": 2.0},
        {"unit": "ASMO blocks.0.mlp", "mse_before": 1.0, "mse_after": 0.5}]
    flags = summary.quality_flags(results)
    assert [(f["kind"], f["method"], f["bits"]) for f in flags] == [
        ("low_sqnr", "adfq", "w8a8"), ("asmo_mse_rose", "adfq", "w4a4")]
    assert "1 of 2 modules (blocks.0.attn)" in flags[1]["message"]
    results["config"]["report"]["max_drop"] = 0.0
    results["fp32"]["top1"] = 100.0
    assert summary.quality_flags(results)[-1]["kind"] == "none_within_max_drop"
