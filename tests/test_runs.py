"""Runs as cells: sharded evaluation, Ray against local, resume after kill -9, never replacing a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adfq_sim.cli import main
from adfq_sim.config import load_config
from adfq_sim.errors import UserInputError
from adfq_sim.pipeline import run_experiment
from adfq_sim.runs.cells import eval_ranges
from adfq_sim.runs.folder import config_changes
from conftest import strip_timings, write_config

# The demo with three cells; ADFQ at alpha 2 so that PPOQ's sparse path carries values and its outlier
# counts are merged over shards too; few ASMO steps to stay quick.
BASE = {
    "data": {"calib_images": 16, "eval_images": 48, "batch_size": 16},
    "quant": {"methods": ["minmax", "percentile", "adfq"], "bits": ["w4a4"],
              "adfq": {"alpha_qkv": 2.0, "alpha_fc1": 2.0, "asmo_iters": 20}},
    "executor": {"threads": 1},
}


def _comparable(results: dict) -> dict:
    """results.json less what may differ between equal runs: timings, the environment, where it ran."""
    config = {k: v for k, v in results["config"].items() if k not in ("executor", "out")}
    return strip_timings({**results, "environment": None, "config": config})


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _config(tmp_path: Path, name: str, **sections) -> Path:
    data = {**BASE, **sections, "out": str(tmp_path / "runs")}
    return write_config(tmp_path / f"{name}.yaml", data)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The three cells computed one after another in one process, evaluation unsplit."""
    tmp_path = tmp_path_factory.mktemp("reference")
    return _results(run_experiment(load_config(_config(tmp_path, "base"))))


@given(images=st.integers(1, 500), batch_size=st.integers(1, 64), shards=st.integers(1, 20))
def test_eval_ranges_tile_the_images_in_whole_batches(images: int, batch_size: int, shards: int) -> None:
    ranges = eval_ranges(images, batch_size, shards)
    batches = -(-images // batch_size)
    assert len(ranges) == min(shards, batches)
    assert ranges[0][0] == 0 and ranges[-1][1] == images
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % batch_size == 0 and stop > start for start, stop in ranges)
    sizes = [-(-(stop - start) // batch_size) for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_config_changes_name_every_changed_key() -> None:
    old = {"seed": 0, "quant": {"bits": ["w4a4"], "methods": ["adfq"]}, "out": "runs"}
    new = {"seed": 3, "quant": {"bits": ["w4a4"], "methods": ["adfq", "minmax"]}, "out": "runs"}
    assert config_changes(old, new) == ["quant.methods: ['adfq'] -> ['adfq', 'minmax']", "seed: 0 -> 3"]
    assert config_changes(old, old) == []


def test_simulator_leaves_torch_threads_as_they_were(tmp_path: Path) -> None:
    """Numba's OpenMP layer resets the thread count on its first parallel launch: a fresh process."""
    script = """
import torch
from adfq_sim.data.demo import load_demo_split
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.export import export
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig
images, _ = load_demo_split("calib")
qmodel = quantize_model(load_model(ModelConfig()).model, build_recipe("minmax", QuantConfig()), 8, 8, [images[:8]])
program = export(qmodel, [images[:8]])
torch.set_num_threads(1)
run_simulator(program, images[:4])
print(torch.get_num_threads())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_cell_alone_and_split_equals_cell_after_two_others(tmp_path: Path, reference: dict) -> None:
    """ADFQ computed alone, its evaluation in three ranges, equals ADFQ computed third and unsplit."""
    alone = _results(run_experiment(load_config(_config(
        tmp_path, "alone", quant={**BASE["quant"], "methods": ["adfq"]},
        executor={"threads": 1, "eval_shards": 3}))))
    assert alone["environment"]["executor"] == {"kind": "local", "threads": 1, "eval_shards": 3}
    (entry,) = _comparable(alone)["results"]
    expected = _comparable(reference)["results"][2]
    assert entry["method"] == "adfq" and entry == expected
    ratios = [r["eval"] for r in entry["outlier_ratio"].values()]
    assert ratios and all(r is not None for r in ratios) and max(ratios) > 0  # the sparse path carried values


def test_cell_after_a_randomised_one_equals_it_alone(tmp_path: Path) -> None:
    """ASMO draws random numbers; the ADFQ cell after another ADFQ cell starts from the seed all the same."""
    quant = {**BASE["quant"], "methods": ["adfq"], "bits": ["w4a4", "w3a3"]}
    after = _results(run_experiment(load_config(_config(tmp_path, "after", quant=quant))))
    alone = _results(run_experiment(load_config(_config(tmp_path, "alone", quant={**quant, "bits": ["w3a3"]}))))
    assert _comparable(alone)["results"] == _comparable(after)["results"][1:]


def test_ray_executor_equals_local(tmp_path: Path, reference: dict) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    cfg = load_config(_config(tmp_path, "base", executor={"kind": "ray", "threads": 1, "eval_shards": 2}))
    results = _results(run_experiment(cfg))
    assert results["environment"]["executor"] == {"kind": "ray", "threads": 1, "eval_shards": 2}
    assert _comparable(results) == _comparable(reference)  # integer logits and fake-quant logits alike


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, reference: dict) -> None:
    config = _config(tmp_path, "base")
    command = [sys.executable, "-m", "adfq_sim", "run", "--config", str(config)]
    cells = tmp_path / "runs" / ".base.partial" / "cells"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not any(cells.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = sorted(p.stem for p in cells.glob("*.json"))
    assert 1 <= len(kept) < 3

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    folder = tmp_path / "runs" / "base"
    assert _comparable(_results(folder)) == _comparable(reference)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base"]  # the working folder became the run
    log = (folder / "run.log").read_text().splitlines()
    (at,) = [i for i, line in enumerate(log) if "resuming:" in line]
    assert f"resuming: {len(kept)} of 3 cells read back ({', '.join(kept)})" in log[at]
    recomputed = [line for line in log[at:] if " w4a4: top1 " in line]
    assert len(recomputed) == 3 - len(kept)  # only the rest were computed again
    assert not any(f"{key.replace('_w4a4', '')} w4a4: top1" in line for line in recomputed for key in kept)


def test_existing_run_is_never_replaced_without_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      reference: dict) -> None:
    folder = tmp_path / "runs" / "base"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{"kept": true}\n')
    before = _snapshot(folder)
    assert main(["run", "--config", str(_config(tmp_path, "base"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite" in err and "--resume" in err and str(folder) in err
    assert _snapshot(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base"]
    assert main(["run", "--config", str(_config(tmp_path, "base")), "--overwrite"]) == 0
    assert _comparable(_results(folder)) == _comparable(reference)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base"]


def test_resume_refuses_a_changed_config_naming_the_change(tmp_path: Path) -> None:
    work = tmp_path / "runs" / ".base.partial"
    (work / "cells").mkdir(parents=True)
    recorded = {**load_config(_config(tmp_path, "base")).to_dict(), "executor": {"threads": 1}}
    (work / "run.json").write_text(json.dumps({**recorded, "seed": 7}))
    with pytest.raises(UserInputError, match=r"--resume: the config changed since the interrupted run: seed: 7 -> 0"):
        run_experiment(load_config(_config(tmp_path, "base")), mode="resume")


def test_error_after_a_finished_cell_keeps_it_for_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         reference: dict) -> None:
    """A bad input found in the second cell (here: raised there) ends the run; the first cell stays."""
    import adfq_sim.runs.local as local

    calls = []
    real = local.calibrate

    def failing_second(ctx, cell):
        calls.append(cell)
        if len(calls) == 2:
            raise UserInputError("data.root: broken.png: not a readable image")
        return real(ctx, cell)

    monkeypatch.setattr(local, "calibrate", failing_second)
    cfg = load_config(_config(tmp_path, "base", quant={**BASE["quant"], "methods": ["minmax", "percentile"]}))
    with pytest.raises(UserInputError, match="finished cells are kept in .*continue with --resume"):
        run_experiment(cfg)
    work = tmp_path / "runs" / ".base.partial"
    assert sorted(p.name for p in (work / "cells").iterdir()) == ["minmax_w4a4.json"]
    monkeypatch.undo()
    resumed = _results(run_experiment(cfg, mode="resume"))
    assert _comparable(resumed)["results"] == _comparable(reference)["results"][:2]


def test_cuda_asmo_on_a_ray_cluster_without_gpus_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The driver need not have the GPU a Ray cluster has; a cluster without one is named, not waited on."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = _config(tmp_path, "base", quant={**BASE["quant"], "methods": ["adfq"], "adfq": {"device": "cuda"}})
    assert main(["run", "--config", str(config), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "adfq-sim: error: quant.adfq.device: cuda, but the Ray cluster has no GPU"
    assert not (tmp_path / "runs").exists()


def test_out_under_a_file_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    assert main(["run", "--config", str(_config(tmp_path, "base")), "--out", str(tmp_path / "afile" / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"adfq-sim: error: out: {tmp_path / 'afile'} is a file, not a folder"
    assert (tmp_path / "afile").read_text() == "not a folder\n"
