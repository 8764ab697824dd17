"""Swin as integer ops: the index tables equal timm's reorderings, and every method's program runs
code for code alike in the three executors on a tiny Swin that has everything Swin-T has and more.

The tiny Swin (40x40 images, 4x4 patches, 4x4 windows, depths 2-2-2): stage 1 is 10x10 tokens, padded
to 12x12 for 9 windows, every second block shifted (masked); patch merging of 10x10 gives 5x5, padded to
8x8 for 4 windows (most of them padding), shifted again; merging an odd 5x5 pads to 6x6 and gives 3x3,
which one unshifted 3x3 window covers (no reordering). The relative position bias is drawn large, so a
wrong lookup or rounding would show.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.swin_transformer import WindowAttention
from timm.models.swin_transformer import window_partition as timm_partition
from timm.models.swin_transformer import window_reverse as timm_reverse

from adfq_sim.config import load_config
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.export import export
from adfq_sim.intsim.faithful import run_faithful
from adfq_sim.intsim.ops import AttentionScores, Gather, Softmax
from adfq_sim.intsim.program import describe, load_program, save_program
from adfq_sim.intsim.verify import total_mismatches, verify
from adfq_sim.intsim.windows import patch_merging, window_partition
from adfq_sim.pipeline import run_experiment
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import METHODS, build_recipe
from adfq_sim.quant.options import QuantConfig
from conftest import write_config, write_image_folder
from reports import summary

TINY_SWIN = {"img_size": 40, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": [2, 2, 2],
             "num_heads": [2, 2, 4]}
QUANT = QuantConfig(
    ptq4vit=dataclasses.replace(QuantConfig().ptq4vit, candidates=10, rounds=1, images=8),
    adfq=dataclasses.replace(QuantConfig().adfq, alpha_qkv=1.0, alpha_fc1=1.0, asmo=False))


def tiny_swin(num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=num_classes,
                              **TINY_SWIN).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WindowAttention):
                module.relative_position_bias_table.normal_(0.0, 1.0)
    return model


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 13), width=st.integers(1, 13), wh=st.integers(1, 6), ww=st.integers(1, 6),
       shifted=st.booleans())
def test_window_tables_are_timms_roll_pad_partition_and_reverse(height, width, wh, ww, shifted) -> None:
    shift = (wh // 2, ww // 2) if shifted else (0, 0)
    rows = torch.arange(1, height * width + 1).reshape(1, height, width, 1)  # 0 marks padding
    x = torch.roll(rows, (-shift[0], -shift[1]), (1, 2))
    padded_h, padded_w = -(-height // wh) * wh, -(-width // ww) * ww
    x = torch.nn.functional.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
    windows = timm_partition(x, (wh, ww)).reshape(-1) - 1
    partition, reverse = window_partition(height, width, (wh, ww), shift)
    np.testing.assert_array_equal(partition[:, 0], windows.numpy())
    back = timm_reverse(torch.from_numpy(partition[:, 0]).reshape(-1, wh, ww, 1), (wh, ww), padded_h, padded_w)
    back = torch.roll(back[:, :height, :width], shift, (1, 2)).reshape(-1)
    np.testing.assert_array_equal(partition[reverse[:, 0], 0], back.numpy())
    np.testing.assert_array_equal(back.numpy(), np.arange(height * width))


@settings(max_examples=30, deadline=None)
@given(height=st.integers(1, 11), width=st.integers(1, 11))
def test_merging_table_is_timms_patch_merging_reshape(height, width) -> None:
    x = torch.arange(1, height * width + 1).reshape(1, height, width, 1)
    x = torch.nn.functional.pad(x, (0, 0, 0, width % 2, 0, height % 2))
    merged = x.reshape(1, x.shape[1] // 2, 2, x.shape[2] // 2, 2, 1).permute(0, 1, 3, 4, 2, 5).flatten(3)
    np.testing.assert_array_equal(patch_merging(height, width), merged.reshape(-1, 4).numpy() - 1)


@pytest.fixture(scope="module")
def swin():
    model = tiny_swin()
    return model, [torch.randn(8, 3, 40, 40, generator=torch.Generator().manual_seed(1))], \
        torch.randn(5, 3, 40, 40, generator=torch.Generator().manual_seed(2))


def _agreeing_codes(program, images) -> dict[str, np.ndarray]:
    ref_logits, ref = run_reference(program, images)
    sim_logits, sim = run_simulator(program, images)
    _, faithful = run_faithful(program, images)
    reports = verify(sim, ref, program.tensor_formats()) + verify(sim, faithful)
    assert total_mismatches(reports) == 0, [r for r in reports if r.mismatches]
    np.testing.assert_array_equal(sim_logits, ref_logits)
    return sim


@pytest.mark.parametrize("method, bits", [(m, 4) for m in sorted(METHODS)] + [("adfq", 8), ("ptq4vit", 8)])
def test_three_executions_agree_on_a_tiny_swin(swin, method: str, bits: int, tmp_path) -> None:
    model, calib, images = swin
    qmodel = quantize_model(model, build_recipe(method, QUANT), bits, bits, calib)
    program = export(qmodel, calib)
    codes = _agreeing_codes(program, images)
    loaded = load_program(save_program(program, tmp_path / "swin.npz"))  # every Swin op survives the file
    np.testing.assert_array_equal(run_simulator(loaded, images)[0], run_simulator(program, images)[0])
    assert describe(loaded) == describe(program)
    assert program.model == "swin"
    # Every verified tensor of every block, the merging reductions and the pooled head input.
    assert {n for n in codes if n.startswith("layers.")} >= {f"layers.{s}.blocks.{b}.{t}" for s in range(3)
                                                             for b in range(2) for t in ("qkv_in", "probs", "fc2_in")}
    assert {"layers.1.downsample.reduction_in", "layers.2.residual_in", "head_in"} <= set(codes)
    gathers = {op.name for op in program.ops if isinstance(op, Gather)}
    assert "layers.0.blocks.1.attn.partition" in gathers and "layers.1.downsample.merge" in gathers
    assert not any(name.startswith("layers.2.blocks") for name in gathers)  # one 3x3 window: no reordering
    if method == "adfq":  # PPOQ's sparse path carries outliers after every LayerNorm it follows
        counts = [int(np.count_nonzero(codes[n])) for n in program.outlier_tensors()]
        assert len(counts) == 2 * 6 and min(counts) > 0


def test_masked_scores_get_exactly_zero_probability(swin) -> None:
    """A shifted window's mask sends a score to the softmax's minimum: its probability is 0, i.e. the
    probability quantizer's code of 0, and the row's other probabilities still sum to about 1."""
    model, calib, images = swin
    program = export(quantize_model(model, build_recipe("minmax", QUANT), 8, 8, calib), calib)
    codes = _agreeing_codes(program, images)
    scores = {op.output: op for op in program.ops if isinstance(op, AttentionScores)}
    masked_ops = [op for op in scores.values() if op.mask is not None]
    assert [op.name for op in masked_ops] == ["layers.0.blocks.1.attn.qk", "layers.1.blocks.1.attn.qk"]
    for softmax in (op for op in program.ops if isinstance(op, Softmax) and op.input in scores):
        op = scores[softmax.input]
        if op.mask is None:
            continue
        out = softmax.constants.out
        zero = int(out.zero_point[0])
        probs = codes[softmax.output].reshape(len(images), op.mask.shape[0], op.heads, op.tokens, op.tokens)
        mask = np.broadcast_to(op.mask[None, :, None], probs.shape)
        assert mask.any() and (probs[mask] == zero).all()
        total = ((probs - zero) * float(2.0 ** -out.s[0] * out.m[0] * 2.0**30) ** -1).sum(axis=-1)
        assert np.abs(total - 1).max() < 0.05


@pytest.mark.parametrize("method", ["minmax", "adfq"])
def test_integer_swin_follows_the_fake_quant_swin(method: str) -> None:
    """The program computes what the fake-quant model computes: where errors have not yet compounded
    (a shifted, padded block of stage 1 and of stage 2) the codes equal the fake-quant quantizers' codes of
    the same tensors, and the logits track it. Measured at W8A8 on 64 images: code equality 99.95-100 %
    in stage 1 and 99.4-99.8 % in stage 2, logit correlation 0.99989-0.99995, arg-max agreement
    63-64 / 64. A wrong window order, bias or mask would put these far lower."""
    model = tiny_swin()
    calib = [torch.randn(32, 3, 40, 40, generator=torch.Generator().manual_seed(1))]
    images = torch.randn(64, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    qmodel = quantize_model(model, build_recipe(method, QUANT), 8, 8, calib)
    logits, codes = run_simulator(export(qmodel, calib), images)
    tensors = {"layers.0.blocks.1.attn.qkv.act_q": ("layers.0.blocks.1.qkv_in", 0.999),
               "layers.0.blocks.1.attn.probs_q": ("layers.0.blocks.1.probs", 0.999),
               "layers.1.downsample.reduction.act_q": ("layers.1.downsample.reduction_in", 0.999),
               "layers.1.blocks.1.attn.qkv.act_q": ("layers.1.blocks.1.qkv_in", 0.99)}
    fake_codes = {}
    hooks = [qmodel.model.get_submodule(q).register_forward_pre_hook(
        lambda m, args, q=q: fake_codes.__setitem__(q, m.quantize(args[0]).reshape(len(images), -1).numpy()))
        for q in tensors]
    with torch.no_grad():
        fake = qmodel(images).numpy()
    for hook in hooks:
        hook.remove()
    for quantizer, (tensor, bar) in tensors.items():  # windows in the same order, heads within them
        assert (codes[tensor] == fake_codes[quantizer]).mean() >= bar, tensor
    assert np.corrcoef(logits.ravel(), fake.ravel())[0, 1] > 0.9995
    assert (logits.argmax(1) == fake.argmax(1)).mean() >= 62 / 64


def test_run_on_a_tiny_swin_reports_integer_top1_for_every_configuration(tmp_path) -> None:
    """`adfq-sim run` on a labelled image folder: every (method, bits) is exported, simulated (integer
    top-1), verified (0 mismatched codes) and priced, with PPOQ outliers on the sparse path."""
    write_image_folder(tmp_path / "images", classes=3, per_class=4)
    cfg = load_config(write_config(tmp_path / "swin.yaml", {
        "model": {"name": "swin_tiny_patch4_window7_224", "random_init": True, "num_classes": 3, "kwargs": TINY_SWIN},
        "data": {"kind": "imagefolder", "root": str(tmp_path / "images"), "calib_images": 8, "eval_images": 6,
                 "batch_size": 4},
        "quant": {"bits": ["w8a8", "w4a4"], "ptq4vit": {"candidates": 10, "rounds": 1, "images": 8},
                  "adfq": {"asmo_iters": 5, "asmo_images": 8, "alpha_qkv": 1.0, "alpha_fc1": 1.0}},
        "verify": {"images": 3},
        "out": str(tmp_path / "runs"),
    }))
    folder = run_experiment(cfg)
    results = json.loads((folder / "results.json").read_text())
    assert len(results["results"]) == 10
    for entry in results["results"]:
        integer = entry["integer_evaluation"]
        assert integer["exported"] and isinstance(integer["top1"], float), entry["method"]
        assert integer["verify"]["mismatches"] == 0 and integer["verify"]["tensors"] >= 68
        assert entry["cost"]["edge_npu"]["macs"] > 0
        if entry["method"] == "adfq":
            assert integer["verify"]["outliers"]["count"] > 0
            assert entry["cost"]["edge_npu"]["energy_uj"]["outliers"] > 0
        rows = summary.layer_energy_rows(entry["cost"]["edge_npu"])  # the per-layer plot shows every op once
        assert sum(sum(parts.values()) for _, parts in rows) * 1e-6 == pytest.approx(
            entry["cost"]["edge_npu"]["energy_per_inference_uj"], rel=1e-9)
        assert "layers.1.downsample vector ops" in {name for name, _ in rows}
    report = (folder / "report.md").read_text()  # a row per configuration, each with its integer top-1
    rows = [line.split("|") for line in report.splitlines() if line.startswith(("| minmax W", "| adfq W"))]
    assert len(rows) == 4 and all(float(row[3]) >= 0 for row in rows)
    assert "was not exported (" not in report and "**0** mismatched codes over" in report
