"""Accelerator specs: every preset loads; bad specs fail with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adfq_sim.config import load_config
from adfq_sim.errors import UserInputError
from hw_models.spec import VECTOR_OPS, load_spec, preset_names

PRESETS = {"edge_npu", "eyeriss_like", "nvdla_small_like", "ethos_u55_like", "edge_tpu_like"}


def test_every_preset_loads_with_its_figures():
    assert set(preset_names()) == PRESETS
    specs = {name: load_spec(name) for name in PRESETS}
    assert all(s.name == name for name, s in specs.items())
    assert (specs["eyeriss_like"].pe_array.rows * specs["eyeriss_like"].pe_array.cols) == 168  # Eyeriss v1
    assert specs["nvdla_small_like"].pe_array.rows * specs["nvdla_small_like"].pe_array.cols == 64
    tpu = specs["edge_tpu_like"]
    assert 3.8e12 < tpu.pe_array.rows * tpu.pe_array.cols * 2 * tpu.clock_mhz * 1e6 < 4.2e12  # ~4 TOPS int8
    assert all(set(s.vector_unit.cycles_per_element) == set(VECTOR_OPS) for s in specs.values())
    assert specs["eyeriss_like"].pe_array.registers == {"inputs": 12, "weights": 224, "outputs": 24}  # scratchpads


@pytest.mark.parametrize("patch, message", [
    ({"pe_aray": {}}, r"pe_aray: unknown key \(did you mean 'pe_array'\?\)"),
    ({"pe_array": {"rows": 0}}, r"pe_array.rows: must be > 0, got 0"),
    ({"pe_array": {"dataflow": "row_stationary"}}, r"pe_array.dataflow: unknown value 'row_stationary'"),
    ({"macs": [{"a_bits": 1, "w_bits": 8}]}, r"macs\[0\].a_bits: must be in 2..16, got 1"),
    ({"clock_mhz": "fast"}, r"clock_mhz: expected float, got str"),
    ({"sram": [{"name": "a"}, {"name": "a"}]}, r"sram: level names must be unique"),
    ({"vector_unit": {"cycles_per_element": {"layernorm": 1}}}, r"vector_unit.cycles_per_element: missing add, gelu"),
    ({"energy_pj": {"int8_mul": 0.1}}, r"energy_pj: unknown value 'int8_mul' \(did you mean 'int8_mult'\?\)"),
    ({"dram": {"bandwidth_gb_s": -1}}, r"dram.bandwidth_gb_s: must be > 0"),
    ({"technology_nm": 5}, r"technology_nm: must be in 7..180 \(the range of the node-scaling fits\), got 5"),
    ({"vdd_v": -0.8}, r"vdd_v: must be > 0"),
    ({"technology_nm": 180, "vdd_v": 0.5}, r"vdd_v: a supply of 0.5 V is outside the node-scaling fit at 180.0 nm"),
    ({"pe_array": {"edge_folds": "padded"}}, r"pe_array.edge_folds: unknown value 'padded'"),
    ({"pe_array": {"registers": {"input": 4}}}, r"pe_array.registers: unknown value 'input' \(did you mean 'inputs'\?\)"),
    ({"pe_array": {"registers": {"weights": 0}}}, r"pe_array.registers.weights: must be an integer > 0"),
    ({"pe_array": {"registers": {"outputs": 2.5}}}, r"pe_array.registers.outputs: must be an integer > 0"),
])
def test_bad_specs_name_the_field(patch, message):
    with pytest.raises(UserInputError, match=r"^hardware\." + message):
        load_spec({"name": "x", **patch})


def test_specs_from_files_and_experiment_configs(tmp_path: Path):
    (tmp_path / "npu.yaml").write_text(yaml.safe_dump({"name": "mine", "pe_array": {"rows": 32, "cols": 8}}))
    assert load_spec(str(tmp_path / "npu.yaml")).pe_array.rows == 32
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"name": "mine", "outlier_lanes": -1}))
    with pytest.raises(UserInputError, match=r"bad.yaml: outlier_lanes: must be >= 0"):
        load_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(UserInputError, match=r"accelerator spec file not found: .*missing.yaml"):
        load_spec(str(tmp_path / "missing.yaml"))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"hardware": {"pe_array": {"dataflow": "diagonal"}}}))
    with pytest.raises(UserInputError, match=r"exp.yaml: hardware.pe_array.dataflow: unknown value 'diagonal'"):
        load_config(tmp_path / "exp.yaml")
    with pytest.raises(UserInputError, match=r"unknown accelerator preset 'edge_npv' \(did you mean 'edge_npu'\?\)"):
        load_spec("edge_npv")
