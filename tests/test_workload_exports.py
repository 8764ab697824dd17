"""Workloads written for SCALE-Sim, Timeloop and ZigZag say what our cost model prices: the GEMMs the
IntegerProgram runs (grouped products repeated), their sizes in each tool's convention, the operand widths
where the format holds them, and the spec's array, buffers and dataflow; and our cycle model agrees with
SCALE-Sim's closed forms where they are meant to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from adfq_sim.intsim.export import export
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig
from hw_models import export_scalesim, export_timeloop, export_zigzag
from hw_models.cost import cost
from hw_models.dataflow import gemm_cycles
from hw_models.spec import load_spec
from hw_models.workload import workload
from conftest import random_init_workloads


@pytest.fixture(scope="module")
def deit_tiny_w4():
    return random_init_workloads("deit_tiny_patch16_224", [("adfq", 4)])["adfq", 4]


class _TaggedLoader(yaml.SafeLoader):
    """Timeloop's !Container / !Component tags read as plain mappings with the tag kept."""


_TaggedLoader.add_multi_constructor("!", lambda loader, tag, node: {"tag": tag, **loader.construct_mapping(node)})


def test_scalesim_topology_has_one_row_per_product_in_its_m_n_k_convention(deit_tiny_w4):
    csv = export_scalesim.topology_csv(deit_tiny_w4)
    lines = csv.splitlines()
    assert lines[0] == "Layer, M, N, K,"
    assert all(line.endswith(",") for line in lines)  # SCALE-Sim drops the field after the last comma
    assert len(lines) - 1 == sum(g.groups for g in deit_tiny_w4.gemms)  # heads repeated: 12 x 3 x 2 + 50
    rows = {}
    for line in lines[1:]:
        name, m, n, k = (field.strip() for field in line.split(",")[:-1])
        rows[name] = (int(m), int(n), int(k))
    assert rows["blocks.0.attn.qkv"] == (197, 576, 192)  # tokens, output features, inner dimension
    assert rows["blocks.0.mlp.fc2"] == (197, 192, 768)
    assert rows["blocks.11.attn.qk.2"] == (197, 197, 64) and "blocks.0.attn.qk.3" not in rows  # 3 heads
    assert sum(m * n * k for m, n, k in rows.values()) == deit_tiny_w4.macs()


@pytest.mark.parametrize("preset", ["edge_npu", "eyeriss_like"])
def test_scalesim_config_holds_the_array_buffer_and_dataflow(preset):
    spec = load_spec(preset)
    cfg = export_scalesim.config_cfg(spec, "run")
    values = dict(line.split(":", 1) for line in cfg.splitlines() if ":" in line and not line.startswith("["))
    values = {key.strip(): value.strip() for key, value in values.items()}
    assert int(values["ArrayHeight"]) == spec.pe_array.rows and int(values["ArrayWidth"]) == spec.pe_array.cols
    assert values["Dataflow"] == {"output_stationary": "os", "weight_stationary": "ws"}[spec.pe_array.dataflow]
    assert 3 * int(values["IfmapSramSzkB"]) <= spec.sram[-1].size_kib < 3 * (int(values["IfmapSramSzkB"]) + 1)
    for section in ("[general]", "[architecture_presets]", "[layout]", "[sparsity]", "[run_presets]"):
        assert section in cfg


def test_timeloop_problems_per_shape_and_layers_with_widths(deit_tiny_w4):
    spec = load_spec("edge_npu")
    files = export_timeloop.files(deit_tiny_w4, spec, "run")
    shapes = {(g.m, g.n, g.k) for g in deit_tiny_w4.gemms}
    problems = {path: yaml.safe_load(text) for path, text in files.items() if path.startswith("problems/")}
    assert len(problems) == len(shapes)
    for doc in problems.values():
        p = doc["problem"]
        assert p["version"] == 0.4 and p["shape"]["dimensions"] == ["M", "N", "K"]
        assert (p["instance"]["M"], p["instance"]["N"], p["instance"]["K"]) in shapes
    layers = yaml.safe_load(files["layers.yaml"])["layers"]
    assert [layer["name"] for layer in layers] == [g.name for g in deit_tiny_w4.gemms]
    for layer, g in zip(layers, deit_tiny_w4.gemms):
        assert layer["times_per_image"] == g.groups and layer["operand_bits"] == {"A": g.a_bits, "B": g.b_bits,
                                                                                  "Z": g.out_bits}
        assert layer["problem"] in {f"problems/{export_timeloop.problem_name(g.m, g.n, g.k)}.yaml"}
    arch = yaml.load(files["arch-edge_npu.yaml"], Loader=_TaggedLoader)["architecture"]
    assert arch["version"] == 0.4
    pe = next(node for node in arch["nodes"] if node.get("name") == "PE")
    assert pe["spatial"] == {"meshX": spec.pe_array.cols, "meshY": spec.pe_array.rows}
    buffer = next(node for node in arch["nodes"] if node.get("name") == "global_buffer")
    attributes = buffer["attributes"]
    assert attributes["depth"] * attributes["width"] == spec.sram[0].size_kib * 1024 * 8


def test_timeloop_architecture_carries_the_pe_register_files(deit_tiny_w4):
    """eyeriss_like's scratchpads as one register file per operand inside the PE, each keeping its data space."""
    spec = load_spec("eyeriss_like")
    arch = yaml.load(export_timeloop.files(deit_tiny_w4, spec, "run")["arch-eyeriss_like.yaml"],
                     Loader=_TaggedLoader)["architecture"]
    names = [node.get("name") for node in arch["nodes"]]
    assert names[names.index("PE") + 1:] == ["inputs_rf", "weights_rf", "outputs_rf", "mac"]
    by_name = {node.get("name"): node for node in arch["nodes"]}
    for operand, space, width in (("inputs", "A", 16), ("weights", "B", 16), ("outputs", "Z", 32)):
        node = by_name[f"{operand}_rf"]
        assert node["attributes"] == {"depth": spec.pe_array.registers[operand], "width": width, "datawidth": width}
        keep = node["constraints"]["dataspace"]
        assert keep["keep"] == [space] and sorted(keep["bypass"]) == sorted({"A", "B", "Z"} - {space})
    plain = yaml.load(export_timeloop.files(deit_tiny_w4, load_spec("edge_npu"), "run")["arch-edge_npu.yaml"],
                      Loader=_TaggedLoader)["architecture"]
    assert not [node for node in plain["nodes"] if str(node.get("name")).endswith("_rf")]


def test_zigzag_hardware_carries_the_pe_register_files():
    """eyeriss_like's scratchpads as per-PE memories (served_dimensions []) below the buffer, one operand
    each, sized entries x width and costed per word at the cost model's register-file energy."""
    from hw_models.cost import register_pj_per_bit

    spec = load_spec("eyeriss_like")
    memories = yaml.safe_load(export_zigzag.hardware_yaml(spec))["memories"]
    assert list(memories) == ["inputs_rf", "weights_rf", "outputs_rf", "global_buffer", "dram"]
    for operand, name, width in (("inputs", "I1", 16), ("weights", "I2", 16), ("outputs", "O", 32)):
        memory = memories[f"{operand}_rf"]
        assert memory["operands"] == [name] and memory["served_dimensions"] == []
        assert memory["size"] == spec.pe_array.registers[operand] * width
        assert memory["r_cost"] == pytest.approx(register_pj_per_bit(spec) * width, rel=1e-5)
    assert list(yaml.safe_load(export_zigzag.hardware_yaml(load_spec("edge_npu")))["memories"]) == [
        "global_buffer", "dram"]


def test_zigzag_layers_carry_the_programs_operand_precision(deit_tiny_w4):
    spec = load_spec("edge_npu")
    files = export_zigzag.files(deit_tiny_w4, spec, "run")
    layers = yaml.safe_load(files["workload.yaml"])
    assert len(layers) == sum(g.groups for g in deit_tiny_w4.gemms)
    assert [layer["id"] for layer in layers] == list(range(len(layers)))
    by_name = {layer["name"]: layer for layer in layers}
    for g in deit_tiny_w4.gemms:
        layer = by_name[g.name if g.groups == 1 else f"{g.name}.0"]
        assert layer["loop_dims"] == ["B", "C", "K"] and layer["loop_sizes"] == [g.m, g.k, g.n]
        assert layer["operand_precision"] == {"W": g.b_bits, "I": g.a_bits, "O": 32, "O_final": g.out_bits}
    fc2 = by_name["blocks.0.mlp.fc2"]["operand_precision"]
    assert fc2["I"] < 8 and fc2["W"] <= 4  # SLQ's 4-bit log codes, 4-bit weights: not an 8x8 stand-in
    hardware = yaml.safe_load(files["edge_npu.yaml"])
    assert hardware["operational_array"]["sizes"] == [spec.pe_array.rows, spec.pe_array.cols]
    assert list(hardware["memories"]) == ["global_buffer", "dram"]
    mapping = yaml.safe_load(files["edge_npu-mapping.yaml"])[0]["spatial_mapping"]
    assert mapping == {"D1": [f"B, {spec.pe_array.rows}"], "D2": [f"K, {spec.pe_array.cols}"]}


def test_cycles_against_scalesims_closed_forms():
    """SCALE-Sim (Samajdar et al., ISPASS 2020) runs a weight-stationary fold of an R x C array in
    2R + C + T - 2 cycles and an output-stationary one in R + C + T - 2 (the drain overlaps the next fold);
    its simulations report that times the folds, less one (measured with scalesim 3.0.0). Ours charges
    the same per fold (edge_folds "full", the default); with "trim" an edge fold costs its real rows r and
    columns c (less than SCALE-Sim)."""
    for rows, cols, m, n, k in ((16, 16, 64, 48, 32), (32, 32, 256, 128, 256), (12, 14, 120, 56, 48)):
        # full folds: weight-stationary maps K on the rows, N on the columns and streams M; output-stationary
        # maps M on the rows, N on the columns and streams K
        for dataflow, s_r, s_c, t, load in (("weight_stationary", k, n, m, 2), ("output_stationary", m, n, k, 1)):
            folds = (s_r // rows) * (s_c // cols)
            assert s_r % rows == 0 and s_c % cols == 0
            for edge_folds in ("full", "trim"):
                assert int(gemm_cycles(m, n, k, 1, rows, cols, 1, dataflow, edge_folds)) == \
                    (load * rows + cols + t - 2) * folds
    # trimmed, an edge fold costs its real rows and columns: 100 x 70 (K = 50) on 32 x 32
    ours = int(gemm_cycles(100, 70, 50, 1, 32, 32, 1, "weight_stationary", "trim"))
    published = (2 * 32 + 32 + 100 - 2) * 2 * 3
    assert ours == published - 3 * 2 * (32 - 18) - 2 * (32 - 6) and ours < published
    ours = int(gemm_cycles(100, 70, 50, 1, 32, 32, 1, "output_stationary", "trim"))  # M = 100: r = 4 on the last fold
    published = (32 + 32 + 50 - 2) * 4 * 3
    assert ours == published - 3 * (32 - 4) - 4 * (32 - 6) and ours < published
    # "full" charges every fold the whole array, as SCALE-Sim does
    assert int(gemm_cycles(100, 70, 50, 1, 32, 32, 1, "output_stationary", "full")) == published
    assert int(gemm_cycles(100, 70, 50, 1, 32, 32, 1, "weight_stationary", "full")) == (2 * 32 + 32 + 100 - 2) * 2 * 3


def test_export_workload_cli_writes_every_configuration(tmp_path: Path):
    """From a config: one folder per (method, bits) with the format's files, the format folder replaced
    whole on a second export."""
    config = tmp_path / "cfg.yaml"
    config.write_text("name: exp\nquant:\n  methods: [minmax]\n  bits: [w8a8, w4a4]\n")
    out = tmp_path / "out"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "adfq_sim", "export-workload", "--config", str(config),
                               "--format", "scalesim", "--out", str(out), "--hardware", "eyeriss_like"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    folder = out / "exp" / "workloads" / "scalesim"
    assert proc.stdout.strip() == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["minmax_w4a4", "minmax_w8a8"]
    assert sorted(p.name for p in (folder / "minmax_w8a8").iterdir()) == ["eyeriss_like.cfg", "layout.csv",
                                                                          "topology.csv"]
    assert not [p for p in (out / "exp" / "workloads").iterdir() if p.name.startswith(".")]
    proc = subprocess.run([sys.executable, "-m", "adfq_sim", "export-workload", "--config", str(config),
                           "--format", "onnx"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "invalid choice: 'onnx'" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_priced_cycles_stay_what_the_exported_shapes_give():
    """The exported sizes are the cost model's: its compute cycles of every array GEMM equal gemm_cycles of
    the exported M, N, K (one lane, the 8x8 MAC kind at W8A8)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    calib = [torch.randn(1, 3, 224, 224)]
    load = workload(export(quantize_model(model, build_recipe("minmax", QuantConfig()), 8, 8, calib), calib))
    spec = load_spec("eyeriss_like")
    priced = {layer.name: layer.compute_cycles for layer in cost(load, spec).layers if layer.kind != "vector"}
    rows = load.products()
    per_gemm: dict[str, int] = {}
    for name, g in rows:
        per_gemm[g.name] = per_gemm.get(g.name, 0) + int(gemm_cycles(g.m, g.n, g.k, 1, spec.pe_array.rows,
                                                                      spec.pe_array.cols, 1, spec.pe_array.dataflow,
                                                                      spec.pe_array.edge_folds))
    assert per_gemm == priced and np.all(np.array(list(priced.values())) > 0)
