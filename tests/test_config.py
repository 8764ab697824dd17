"""Config schema: defaults, types, typos with did-you-mean, and semantic checks naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from adfq_sim.config import Config, load_config
from adfq_sim.errors import UserInputError
from adfq_sim.quant.methods import METHODS
from adfq_sim.quant.options import METHOD_NAMES, QuantConfig, parse_bits
from conftest import write_config


def test_hardware_only_config_is_complete(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "edge.yaml", {"hardware": "edge_npu"}))
    assert cfg.name == "edge"  # the file's stem
    assert cfg.model.name == "demo" and cfg.data.kind == "demo"
    assert cfg.quant.methods == Config().quant.methods and cfg.quant.bits == ["w8a8", "w6a6", "w4a4"]


def test_repo_default_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "edge_npu.yaml")
    assert cfg.hardware == "edge_npu"


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "ablations").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_ablation_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.quant.methods == ["adfq"] and cfg.quant.bits == ["w4a4", "w3a3"]
    a = cfg.quant.adfq
    expected_off = {"full": set(), "no_ppoq": {"ppoq"}, "no_slq": {"slq"}, "no_asmo": {"asmo"},
                    "none": {"ppoq", "slq", "asmo"}}[path.stem]
    assert {k for k in ("ppoq", "slq", "asmo") if not getattr(a, k)} == expected_off


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"quant": {"methds": ["minmax"]}}, ["quant.methds", "did you mean 'methods'"]),
        ({"modle": {}}, ["modle", "did you mean 'model'"]),
        ({"data": {"batch_szie": 4}}, ["data.batch_szie", "did you mean 'batch_size'"]),
        ({"seed": "abc"}, ["seed", "expected int"]),
        ({"seed": True}, ["seed", "expected int"]),
        ({"data": {"calib_images": 2.5}}, ["data.calib_images", "expected int"]),
        ({"quant": {"bits": "w4a4"}}, ["quant.bits", "expected list"]),
        ({"quant": {"methods": ["minmx"]}}, ["quant.methods[0]", "did you mean 'minmax'"]),
        ({"quant": {"bits": ["w8a8", "w9a4"]}}, ["quant.bits[1]", "'w9a4'"]),
        ({"quant": {"bits": ["w4"]}}, ["quant.bits[0]"]),
        ({"quant": {"bits": ["w4a4", "w4a4"]}}, ["quant.bits", "duplicate"]),
        ({"quant": {"percentile": {"percentile": 10}}}, ["quant.percentile.percentile"]),
        ({"data": {"kind": "imagefolde"}}, ["data.kind", "did you mean 'imagefolder'"]),
        ({"data": {"kind": "imagefolder"}}, ["data.root", "required"]),
        ({"data": {"batch_size": 0}}, ["data.batch_size", ">= 1"]),
        ({"data": {"crop_pct": 0.9}}, ["data.crop_pct", "only used with data.kind imagefolder"]),
        ({"verify": {"images": 0}}, ["verify.images", ">= 1"]),
        ({"quant": {"adfq": {"outliers": "int8"}}}, ["quant.adfq.outliers", "int16"]),
        ({"quant": {"adfq": {"profile": "papr"}}}, ["quant.adfq.profile", "did you mean 'paper'"]),
        ({"quant": {"adfq": {"alpha_qkv": 0}}}, ["quant.adfq.alpha_qkv", "> 0"]),
        ({"quant": {"adfq": {"asmo_drop_prob": 1.5}}}, ["quant.adfq.asmo_drop_prob"]),
        ({"quant": {"adfq": {"asmo_iter": 5}}}, ["quant.adfq.asmo_iter", "did you mean 'asmo_iters'"]),
        ({"data": {"calib_images": 16}, "quant": {"adfq": {"asmo_images": 64}}},
         ["quant.adfq.asmo_images", "exceeds data.calib_images"]),
        ({"model": {"name": "deit_smal_patch16_224", "random_init": True}},
         ["model.name", "did you mean 'deit_small_patch16_224'"]),
        ({"model": {"name": "deit_tiny_patch16_224"}}, ["model.checkpoint", "never downloaded"]),
        ({"model": {"checkpoint": "nowhere.pth"}}, ["model.checkpoint", "nowhere.pth"]),
        ({"model": {"checkpoint": "weights.bin"}}, ["model.checkpoint", ".safetensors"]),
        ({"hardware": "edge_nup"}, ["hardware", "did you mean 'edge_npu'"]),
        ({"name": "a/b"}, ["name"]),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, data: dict, fragments: list[str]) -> None:
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(UserInputError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_imagefolder_needs_both_split_folders(tmp_path: Path) -> None:
    (tmp_path / "root" / "train").mkdir(parents=True)
    path = write_config(tmp_path / "c.yaml", {"data": {"kind": "imagefolder", "root": str(tmp_path / "root")}})
    with pytest.raises(UserInputError, match=r"data\.eval_split: folder not found: .*val"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("quant: [unclosed\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UserInputError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("text, expected", [("w8a8", (8, 8)), ("w4a8", (4, 8)), ("w2a3", (2, 3))])
def test_parse_bits(text: str, expected: tuple[int, int]) -> None:
    assert parse_bits(text) == expected


@pytest.mark.parametrize("text", ["w1a8", "w8a9", "W8A8", "w8a8 ", "8a8", "w16a16"])
def test_parse_bits_rejects(text: str) -> None:
    with pytest.raises(UserInputError):
        parse_bits(text)


def test_the_methods_the_config_accepts_are_the_methods_with_recipes() -> None:
    assert tuple(METHODS) == METHOD_NAMES  # same order too: errors list the names in this order
    assert set(QuantConfig().methods) <= set(METHOD_NAMES)


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe\x00binary", "not UTF-8 text (byte 0xff at offset 0)"),
    ("seed: 1\nname: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 17)"),
    (b"seed: 1\x00\n", "line 1 not valid YAML (character U+0000: special characters are not allowed)"),
], ids=["binary", "latin-1", "control-character"])
def test_config_that_is_not_utf8_yaml_text_names_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(UserInputError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {reason}"


def test_accelerator_spec_that_is_not_utf8_names_the_spec_file(tmp_path: Path) -> None:
    spec = tmp_path / "npu.yaml"
    spec.write_bytes("name: n\u00e9\n".encode("latin-1"))
    path = write_config(tmp_path / "c.yaml", {"hardware": str(spec)})
    with pytest.raises(UserInputError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert f"{spec}: not UTF-8 text (byte 0xe9 at offset 7)" in message


DEIT = {"name": "deit_tiny_patch16_224", "random_init": True, "num_classes": 10}


def _imagefolder_config(tmp_path: Path, data: dict, model: dict) -> Path:
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
    return write_config(tmp_path / "c.yaml", {"model": model, "data": {"kind": "imagefolder",
                                                                       "root": str(tmp_path / "images"), **data}})


@pytest.mark.parametrize("data, model, fragments", [
    ({"mean": [0.5, 0.5]}, DEIT, ["data.mean: 2 values for a 3-channel model", "[0.5, 0.5]"]),
    ({"std": [0.2] * 4}, DEIT, ["data.std: 4 values for a 3-channel model"]),
    ({"mean": [0.5] * 3}, {**DEIT, "kwargs": {"in_chans": 1}}, ["data.mean: 3 values for a 1-channel model"]),
    ({"mean": [0.5] * 3}, {}, ["data.mean: 3 values for a 1-channel model"]),  # the demo ViT
    ({"mean": []}, DEIT, ["data.mean: expected one value per channel"]),
    ({"mean": [0.5, float("nan"), 0.5]}, DEIT, ["data.mean: values must be finite"]),
    ({"std": [0.5, float("inf"), 0.5]}, DEIT, ["data.std: values must be finite"]),
    ({"std": [0.5, 0.0, 0.5]}, DEIT, ["data.std: values must be > 0"]),
    ({"std": [-0.5]}, DEIT, ["data.std: values must be > 0"]),
], ids=["mean-2", "std-4", "in_chans-1", "demo", "empty", "nan", "inf", "zero-std", "negative-std"])
def test_mean_and_std_are_checked_against_the_model_channels(tmp_path: Path, data: dict, model: dict,
                                                             fragments: list[str]) -> None:
    path = _imagefolder_config(tmp_path, data, model)
    with pytest.raises(UserInputError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: data.")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("data, model", [({"mean": [0.5] * 3, "std": [0.5]}, DEIT),
                                         ({"mean": [0.5]}, {**DEIT, "kwargs": {"in_chans": 1}}),
                                         ({"std": [0.25]}, {})])
def test_mean_and_std_per_channel_or_one_for_all(tmp_path: Path, data: dict, model: dict) -> None:
    cfg = load_config(_imagefolder_config(tmp_path, data, model))
    assert (cfg.data.mean, cfg.data.std) == (data.get("mean"), data.get("std"))
