"""End to end: image folders, random data, determinism, batch invariance, results schema, run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from adfq_sim.config import load_config
from adfq_sim.data.demo import load_demo_split
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.pipeline import run_experiment
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import METHODS, build_recipe
from adfq_sim.quant.options import AdfqConfig, Ptq4vitConfig, QuantConfig
from conftest import TINY_VIT_KWARGS, TINY_VIT_NAME, strip_timings, write_config

ENTRY_KEYS = {"method", "bits", "w_bits", "a_bits", "top1", "agreement", "sqnr_db", "outlier_ratio",
              "optimization", "quantizers", "integer_evaluation", "timings", "cost"}


def test_imagefolder_pipeline_with_a_checkpoint(tmp_path: Path, tiny_checkpoint, image_folder: Path) -> None:
    path, _ = tiny_checkpoint
    cfg = load_config(write_config(tmp_path / "folder.yaml", {
        "model": {"name": TINY_VIT_NAME, "checkpoint": str(path), "kwargs": TINY_VIT_KWARGS},
        "data": {"kind": "imagefolder", "root": str(image_folder), "calib_images": 6, "batch_size": 4,
                 "crop_pct": 0.8},
        "quant": {"methods": ["minmax", "percentile"], "bits": ["w8a8", "w4a4"]},
        "out": str(tmp_path / "runs"),
    }))
    folder = run_experiment(cfg)
    assert folder == tmp_path / "runs" / "folder"
    results = json.loads((folder / "results.json").read_text())
    assert results["data"]["calib_images"] == 6 and results["data"]["eval_images"] == 12
    assert results["data"]["transform"]["input_size"] == [3, 32, 32]
    assert results["data"]["transform"]["crop_pct"] == 0.8
    assert results["model"]["num_classes"] == 3 and results["model"]["source"] == "checkpoint"
    (hardware,) = results["hardware"]
    assert hardware["name"] == "edge_npu" and hardware["pe_array"]["rows"] == 16
    assert 0.0 <= results["fp32"]["top1"] <= 100.0
    assert [(e["method"], e["bits"]) for e in results["results"]] == [
        ("minmax", "w8a8"), ("percentile", "w8a8"), ("minmax", "w4a4"), ("percentile", "w4a4")]
    for entry in results["results"]:
        assert set(entry) == ENTRY_KEYS
        assert 0.0 <= entry["agreement"] <= 100.0
        integer = entry["integer_evaluation"]  # uniform methods run on the integer simulator too
        assert integer["exported"] and integer["verify"]["mismatches"] == 0 and integer["verify"]["tensors"] > 0
        assert 0.0 <= integer["top1"] <= 100.0
        cost = entry["cost"]["edge_npu"]  # the exported program priced on the default accelerator
        assert cost["accelerator"] == "edge_npu" and cost["energy_per_inference_uj"] > 0
        assert cost["macs"] == sum(cost["macs_by_kind"].values()) == sum(l["macs"] for l in cost["layers"]) > 0
        assert len(integer["verify"]["layers"]) == integer["verify"]["tensors"]
    by = {(e["method"], e["bits"]): e for e in results["results"]}
    assert by[("minmax", "w8a8")]["sqnr_db"] > by[("minmax", "w4a4")]["sqnr_db"]
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert [r["method"] for r in rows] == ["fp32", "minmax", "percentile", "minmax", "percentile"]
    assert (folder / "run.log").read_text().count("top1") >= 5
    assert sorted(p.name for p in folder.parent.iterdir()) == ["folder"]  # no temporary leftovers


def test_random_data_pipeline_has_no_top1(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "rand.yaml", {
        "model": {"name": TINY_VIT_NAME, "random_init": True, "num_classes": 4, "kwargs": TINY_VIT_KWARGS},
        "data": {"kind": "random", "calib_images": 4, "eval_images": 6},
        "quant": {"methods": ["minmax"], "bits": ["w8a8"]},
        "out": str(tmp_path / "runs"),
    }))
    results = json.loads((run_experiment(cfg) / "results.json").read_text())
    assert results["fp32"]["top1"] is None and results["results"][0]["top1"] is None
    assert results["results"][0]["sqnr_db"] > 20.0


def test_same_config_and_seed_give_identical_results_at_any_batch_size(tmp_path: Path) -> None:
    """Run twice, at batch 64 (the calibration set in one batch) and at batch 7 (five batches, the last of
    four images): every method calibrates, evaluates, verifies and prices the same."""
    data = {"quant": {"methods": ["minmax", "percentile", "ptq4vit", "repq", "adfq"], "bits": ["w4a4"],
                      "adfq": {"asmo_iters": 10, "alpha_qkv": 2.0, "alpha_fc1": 2.0},
                      "ptq4vit": {"candidates": 10, "rounds": 1}}}
    runs = [run_experiment(load_config(write_config(tmp_path / "det.yaml", {
        **data, "data": {"calib_images": 32, "eval_images": 64, "batch_size": batch}, "out": str(tmp_path / out)})))
        for batch, out in ((64, "a"), (7, "b"))]
    a, b = (strip_timings(json.loads((run / "results.json").read_text())) for run in runs)
    for results in (a, b):
        results["config"].pop("out"), results["config"]["data"].pop("batch_size")
    assert a == b
    adfq = next(e for e in a["results"] if e["method"] == "adfq")
    integer = adfq["integer_evaluation"]
    assert integer["exported"] and integer["verify"]["mismatches"] == 0 and integer["top1"] > 90
    assert len(adfq["optimization"]) == 10  # ASMO ran on every module and reported it
    assert set(adfq["outlier_ratio"]) == {f"blocks.{i}.{m}.act_q" for i in range(4)
                                          for m in ("attn.qkv", "mlp.fc1")}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_quantized_logits_do_not_depend_on_the_batch(method: str, bits: tuple[int, int]) -> None:
    """The whole recipe (prepare, calibration, optimization) leaves only static quantizer parameters.

    Checked in float64: float32 GEMMs reassociate their sums with the batch size on some CPUs (1e-6 on the
    FP32 demo model on an AVX2 machine), which can flip one fake-quant code whose input sits on a rounding
    boundary (one image in 32, percentile W8A8); in float64 that noise is 1e-15, while a batch statistic
    left in a quantizer would move the logits by a quantization step."""
    model = load_model(ModelConfig()).model
    calib, _ = load_demo_split("calib")
    quick = QuantConfig(adfq=AdfqConfig(asmo_iters=5), ptq4vit=Ptq4vitConfig(candidates=8, rounds=1))
    qmodel = quantize_model(model, build_recipe(method, quick), *bits, [calib[:64], calib[64:128]]).double()
    images, _ = load_demo_split("test")
    images = images.double()
    batch = images[:32]
    with torch.no_grad():
        together = qmodel(batch)
        alone = torch.cat([qmodel(batch[i:i + 1]) for i in range(len(batch))])
        # A different companion batch: the same image next to unrelated ones.
        shuffled = qmodel(torch.cat([batch[:1], images[100:131]]))[0]
    assert torch.allclose(alone, together, atol=1e-9, rtol=0)
    assert torch.equal(alone.argmax(-1), together.argmax(-1))
    assert torch.allclose(shuffled, alone[0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_quantizing_leaves_the_float_model_untouched(method: str) -> None:
    model = load_model(ModelConfig()).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_flags = [p.requires_grad for p in model.parameters()]
    quick = QuantConfig(adfq=AdfqConfig(asmo_iters=2), ptq4vit=Ptq4vitConfig(candidates=4, rounds=1))
    quantize_model(model, build_recipe(method, quick), 4, 4, [load_demo_split("calib")[0][:16]])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grad_flags
    assert not any(type(m).__name__.startswith("Quant") for m in model.modules())
