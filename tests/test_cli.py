"""The command line: help texts, one-line errors with exit status 2, no run folder on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adfq_sim.cli import build_parser, main
from conftest import TINY_VIT_KWARGS, TINY_VIT_NAME, write_config


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adfq_sim", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _main_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one stderr line of `adfq-sim ARGV` run in this process, which must exit with status 2."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adfq-sim: error: "), err
    return lines[0]


def test_help_lists_every_option() -> None:
    parser = build_parser()
    top = parser.format_help()
    assert "run" in top and "train-demo" in top
    subparsers = parser._subparsers._group_actions[0].choices  # the registered sub-commands
    for command, options in (("run", ["--config", "--out", "--seed"]), ("verify", ["--config", "--out", "--seed"]),
                             ("train-demo", ["--out", "--epochs", "--seed"]), ("report", ["RUN_DIR"])):
        text = subparsers[command].format_help()
        for option in options:
            assert option in text


def test_typo_in_config_key(tmp_path: Path) -> None:
    write_config(tmp_path / "c.yaml", {"quant": {"methds": ["minmax"]}})
    proc = _cli("run", "--config", "c.yaml", "--out", "runs", cwd=tmp_path)
    _assert_one_line_error(proc, "quant.methds", "did you mean 'methods'")
    assert not (tmp_path / "runs").exists()


def test_missing_config_and_bad_arguments(tmp_path: Path) -> None:
    _assert_one_line_error(_cli("run", "--config", "nope.yaml", cwd=tmp_path), "nope.yaml")
    _assert_one_line_error(_cli("run", cwd=tmp_path), "--config")
    _assert_one_line_error(_cli("run", "--config", "x.yaml", "--seed", "one", cwd=tmp_path), "--seed")


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe\x00binary", "not UTF-8 text (byte 0xff at offset 0)"),
    ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 9)"),
    (b"quant: [unclosed\n", "line 2 not valid YAML"),
    (b"seed: 1\x00\n", "line 1 not valid YAML (character U+0000"),
], ids=["binary", "latin-1", "syntax", "control-character"])
def test_config_that_is_not_yaml_text_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes,
                                                   reason: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    line = _main_error(capsys, "run", "--config", str(path), "--out", str(tmp_path / "runs"))
    assert f"{path}: {reason}" in line
    assert not (tmp_path / "runs").exists()


def test_class_count_mismatch_leaves_no_run_folder(tmp_path: Path, tiny_checkpoint, image_folder: Path) -> None:
    path, _ = tiny_checkpoint  # 3 classes
    (image_folder / "train" / "class_3").mkdir()
    (image_folder / "val" / "class_3").mkdir()
    for split in ("train", "val"):
        src = next((image_folder / split / "class_0").iterdir())
        (image_folder / split / "class_3" / src.name).write_bytes(src.read_bytes())
    write_config(tmp_path / "c.yaml", {
        "model": {"name": TINY_VIT_NAME, "checkpoint": str(path), "kwargs": TINY_VIT_KWARGS},
        "data": {"kind": "imagefolder", "root": str(image_folder)},
    })
    proc = _cli("run", "--config", "c.yaml", "--out", "runs", cwd=tmp_path)
    _assert_one_line_error(proc, "data.root", "4 class folders", "3 classes")
    assert not (tmp_path / "runs").exists()


def test_unreadable_image_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       tiny_checkpoint, image_folder: Path) -> None:
    path, _ = tiny_checkpoint
    broken = image_folder / "val" / "class_1" / "broken.JPEG"
    broken.write_bytes(b"not an image")
    write_config(tmp_path / "c.yaml", {
        "model": {"name": TINY_VIT_NAME, "checkpoint": str(path), "kwargs": TINY_VIT_KWARGS},
        "data": {"kind": "imagefolder", "root": str(image_folder), "calib_images": 4},
        "quant": {"methods": ["minmax"], "bits": ["w8a8"]},
    })
    line = _main_error(capsys, "run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "runs"))
    assert line == f"adfq-sim: error: {broken}: not a readable image (cannot identify image file)"
    assert not (tmp_path / "runs").exists()


def test_mean_with_the_wrong_channel_count_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    write_config(tmp_path / "c.yaml", {
        "model": {"name": "deit_tiny_patch16_224", "random_init": True, "num_classes": 10},
        "data": {"kind": "imagefolder", "root": str(tmp_path / "images"), "mean": [0.5, 0.5]},
    })
    line = _main_error(capsys, "run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "runs"))
    assert "data.mean: 2 values for a 3-channel model" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["run", "--help"], ["--help"], ["train-demo", "--help"], ["verify", "--help"],
                                  ["report", "--help"]])
def test_help_exits_zero(tmp_path: Path, argv: list[str]) -> None:
    proc = _cli(*argv, cwd=tmp_path)
    assert proc.returncode == 0 and "usage" in proc.stdout


def test_run_writes_results_and_prints_their_path(tmp_path: Path) -> None:
    write_config(tmp_path / "small.yaml", {"data": {"calib_images": 16, "eval_images": 32},
                                           "quant": {"methods": ["minmax"], "bits": ["w8a8"]}})
    proc = _cli("run", "--config", "small.yaml", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(Path("out") / "small" / "results.json")
    assert (tmp_path / "out" / "small" / "results.csv").is_file()


def test_train_demo_is_deterministic(tmp_path: Path) -> None:
    from adfq_sim.models.train_demo import DemoTrainRecipe, train_demo_vit

    recipe = DemoTrainRecipe(epochs=2)
    first, acc_first = train_demo_vit(recipe)
    second, acc_second = train_demo_vit(recipe)
    assert acc_first == acc_second
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_train_demo_command_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    proc = _cli("train-demo", "--epochs", "1", "--out", "demo.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sha256" in proc.stdout and "test" in proc.stderr
    from adfq_sim.models.loading import load_model
    from adfq_sim.models.options import ModelConfig

    loaded = load_model(ModelConfig(checkpoint=str(tmp_path / "demo.safetensors")))
    assert loaded.source == "demo"


def test_verify_command_reports_zero_mismatches(tmp_path: Path) -> None:
    import json

    write_config(tmp_path / "v.yaml", {"data": {"calib_images": 16}, "verify": {"images": 4},
                                       "quant": {"methods": ["minmax", "adfq"], "bits": ["w8a8"],
                                                 "adfq": {"asmo": False, "alpha_qkv": 1.0, "alpha_fc1": 1.0}}})
    proc = _cli("verify", "--config", "v.yaml", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "v" / "verify.json").read_text())
    minmax, adfq = report["results"]
    assert report["total_mismatches"] == 0 and minmax["exported"] and minmax["images"] == 4
    assert {layer["tensor"] for layer in minmax["layers"]} >= {"embed_in", "q", "probs", "fc2_in", "head_in"}
    assert all(layer["mismatches"] == 0 and layer["elements"] > 0 for layer in minmax["layers"])
    assert adfq["exported"] and adfq["mismatches"] == 0
    formats = {layer["tensor"]: layer["format"] for layer in adfq["layers"]}
    assert (formats["qkv_in"], formats["qkv_in_outliers"], formats["probs"], formats["fc2_in"]) == \
        ("ppoq", "int16 outliers", "logsqrt2", "logsqrt2")
    assert "format" in proc.stderr and "int16 outliers" in proc.stderr  # the per-layer table is printed
    for entry in (minmax, adfq):  # each program is saved with its op listing
        stem = tmp_path / "out" / "v" / "programs" / f"{entry['method']}_w8a8"
        assert stem.with_suffix(".npz").is_file() and "IntegerProgram" in stem.with_suffix(".txt").read_text()

    # A saved program verifies on its own (the config gives the data), and a bad file is one line, exit 2.
    saved = tmp_path / "out" / "v" / "programs" / "adfq_w8a8.npz"
    proc = _cli("verify", "--config", "v.yaml", "--out", "out", "--program", str(saved), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # named by the program, beside the config's full verify.json, which it leaves alone
    (entry,) = json.loads((tmp_path / "out" / "v" / "verify-adfq_w8a8.json").read_text())["results"]
    assert len(json.loads((tmp_path / "out" / "v" / "verify.json").read_text())["results"]) == 2
    assert entry["program"] == str(saved) and entry["mismatches"] == 0 and entry["outliers"]["count"] > 0
    proc = _cli("verify", "--config", "v.yaml", "--program", "v.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "v.yaml: not an integer program file" in proc.stderr


def test_cost_command_prices_each_program_per_layer(tmp_path: Path) -> None:
    import json

    write_config(tmp_path / "c.yaml", {"data": {"calib_images": 16}, "verify": {"images": 2},
                                       "quant": {"methods": ["minmax", "adfq"], "bits": ["w4a4"],
                                                 "adfq": {"asmo": False, "alpha_qkv": 1.0}}})
    proc = _cli("cost", "--config", "c.yaml", "--out", "out", "--hardware", "edge_tpu_like", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "c" / "cost-edge_tpu_like.json").read_text())
    assert report["hardware"]["name"] == "edge_tpu_like" and proc.stdout.split() == [
        str(Path("out") / "c" / "cost-edge_tpu_like.json")]
    minmax, adfq = report["results"]
    for entry in (minmax, adfq):
        layer_energy = sum(sum(layer["energy_pj"].values()) for layer in entry["layers"])
        assert abs(layer_energy * 1e-6 - entry["energy_per_inference_uj"]) < 1e-9 * layer_energy
        assert sum(layer["macs"] for layer in entry["layers"]) == entry["macs"]
    assert adfq["macs_by_kind"]["shift"] > 0 and minmax["macs_by_kind"]["shift"] == 0
    assert adfq["energy_uj"]["outliers"] > 0 and adfq["memory_bytes"]["outliers"] > 0  # alpha 1: real traffic
    assert "blocks.0.attn.qkv" in proc.stderr and "total" in proc.stderr  # the per-layer table
    proc = _cli("cost", "--config", "c.yaml", "--hardware", "edge_npv", cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean 'edge_npu'" in proc.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["run", "--config", "bad.yaml"],
    ["verify", "--config", "bad.yaml"],
    ["cost", "--config", "ok.yaml", "--hardware", "edge_npv"],
    ["export-workload", "--config", "ok.yaml", "--format", "zigzag", "--hardware", "edge_npv"],
    ["verify", "--config", "ok.yaml", "--program", "missing.npz"],
    ["cost"],
    ["cost", "no_such_run"],
    ["verify", "no_such_run", "--config", "ok.yaml"],
])
def test_bad_input_is_refused_before_torch_is_imported(tmp_path: Path, argv: list[str]):
    """Importing torch costs seconds; every check of the config and the command line comes first."""
    (tmp_path / "bad.yaml").write_text("quant:\n  methds: [minmax]\n")
    (tmp_path / "ok.yaml").write_text("hardware: edge_npu\n")
    probe = ("import sys\nfrom adfq_sim.cli import main\nrc = main(sys.argv[1:])\n"
             "print(rc, 'torch' in sys.modules, 'timm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr
    assert not (tmp_path / "runs").exists()
