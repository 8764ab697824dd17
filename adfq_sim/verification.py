"""Integer-only checks of a calibrated model: the simulator's accuracy and its per-tensor agreement
with the integer-faithful PyTorch mode (the bar: zero mismatched codes).

`adfq-sim verify --config` writes `<out>/<name>/verify.json` atomically (beside a run's results, without
touching them) and each exported program with its op listing as `programs/<method>_<bits>.npz / .txt`;
`adfq-sim verify RUN_DIR` verifies a finished run's saved programs (nothing calibrated) into the same
file; `--program FILE` writes `verify-<file stem>.json`. `adfq-sim run` adds `integer_evaluation` to each
results entry (`runs.cells`). A (method, bits) whose
quantizers the exporter cannot express yet is reported as not exported, with the reason; it is not
counted as a mismatch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from adfq_sim.config import Config, config_from_dict
from adfq_sim.data.sources import build_data_source
from adfq_sim.errors import UserInputError
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.export import export
from adfq_sim.intsim.faithful import run_faithful
from adfq_sim.intsim.program import IntegerProgram, UnsupportedProgramError, describe, load_program, save_program
from adfq_sim.intsim.verify import LayerReport, format_table, total_mismatches, verify
from adfq_sim.models.loading import load_model
from adfq_sim.progress import bar, step
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.options import parse_bits
from reports.render import load_results

log = logging.getLogger("adfq_sim")
# Where a run folder (and `verify --config`) keeps each exported program: <method>_<bits>.npz / .txt.
PROGRAMS_FOLDER = "programs"


def try_export(qmodel: QuantModel, calib: list[torch.Tensor], label: str) -> tuple[IntegerProgram | None, dict]:
    """The program, or None with the reason where the exporter cannot express the model."""
    try:
        return export(qmodel, calib), {"exported": True}
    except UnsupportedProgramError as exc:
        log.info("%s: not exported to an integer program (%s)", label, exc)
        return None, {"exported": False, "reason": str(exc)}


def compare_codes(program: IntegerProgram, images: torch.Tensor) -> tuple[list[LayerReport], dict]:
    """Per-tensor comparison of the Numba simulator with the integer-faithful PyTorch mode, and the
    traffic of the sparse outlier path: PPOQ outliers among the post-LayerNorm elements verified."""
    _, simulated = run_simulator(program, images)
    _, faithful = run_faithful(program, images)
    pairs = program.outlier_tensors()
    per_tensor = {codes: int(np.count_nonzero(simulated[matrix])) for matrix, codes in pairs.items()}
    outliers = {"count": sum(per_tensor.values()), "elements": sum(int(simulated[m].size) for m in pairs),
                "per_tensor": per_tensor}
    return verify(simulated, faithful, program.tensor_formats()), outliers


def first_eval_images(data, cfg: Config) -> torch.Tensor:
    """The first `verify.images` eval images (all of a smaller split), read batch by batch up to there,
    never the whole split."""
    stop = min(cfg.verify.images, len(data.eval))
    return torch.cat([images for images, _ in data.batches("eval", cfg.data.batch_size, 0, stop)])


def read_program(path: Path) -> IntegerProgram:
    """A saved program; a missing file or one of another kind or version is a UserInputError naming it."""
    try:
        return load_program(path)
    except (OSError, ValueError) as exc:
        raise UserInputError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def run_program(folder: Path, result: dict) -> IntegerProgram:
    """The program a finished run saved for one of its (exported) results entries."""
    path = folder / PROGRAMS_FOLDER / f"{result['method']}_{result['bits']}.npz"
    if not path.is_file():
        raise UserInputError(f"{path}: the run has no saved program for {result['method']} {result['bits']} "
                             "(runs before this version kept none: run the config again)")
    return read_program(path)


def save_with_listing(program: IntegerProgram, stem: Path) -> None:
    """The program file and its op listing, each written atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_program(program, stem.with_suffix(".npz"))
    tmp = stem.with_name(f".{stem.name}.txt.partial-{os.getpid()}")
    tmp.write_text(describe(program) + "\n")
    tmp.replace(stem.with_suffix(".txt"))


def calibrated_program(model: torch.nn.Module, cfg: Config, method: str, bits: str, calib: list[torch.Tensor]
                       ) -> tuple[IntegerProgram | None, dict]:
    """Calibrate one (method, bits) and export it: the program (or None) and its entry's first keys."""
    w_bits, a_bits = parse_bits(bits)
    qmodel = quantize_model(model, build_recipe(method, cfg.quant), w_bits, a_bits, calib)
    program, entry = try_export(qmodel, calib, f"{method} {bits}")
    return program, {"method": method, "bits": bits, **entry}


def _verify_one(model: torch.nn.Module, cfg: Config, method: str, bits: str, calib: list[torch.Tensor],
                images: torch.Tensor, programs: Path) -> dict:
    program, entry = calibrated_program(model, cfg, method, bits, calib)
    label = f"{method} {bits}"
    if program is None:
        return entry
    save_with_listing(program, programs / f"{method}_{bits}")
    reports, outliers = compare_codes(program, images)
    log.info("%s: simulator vs integer-faithful fake-quant (%d outliers on the sparse path)\n%s", label,
             outliers["count"], format_table(reports))
    return {**entry, "images": len(images), "mismatches": total_mismatches(reports), "outliers": outliers,
            "layers": [r.as_dict() for r in reports]}


def _verify_saved(program: IntegerProgram, name: str, images: torch.Tensor, entry: dict) -> dict:
    """Verify a saved program (`name`: its file or its run entry, for messages) on `images`; `entry`
    holds the keys that name it in verify.json."""
    image = program.image
    if tuple(images.shape[1:]) != (image.channels, image.height, image.width):
        raise UserInputError(f"{name}: the program takes {image.channels}x{image.height}x{image.width} images, the "
                             f"config's data gives {'x'.join(map(str, images.shape[1:]))}")
    reports, outliers = compare_codes(program, images)
    log.info("%s: simulator vs integer-faithful fake-quant (%d outliers on the sparse path)\n%s", name,
             outliers["count"], format_table(reports))
    return {**entry, "exported": True, "images": len(images), "mismatches": total_mismatches(reports),
            "outliers": outliers, "layers": [r.as_dict() for r in reports]}


def _write(path: Path, config: dict, entries: list[dict]) -> tuple[Path, int]:
    mismatches = sum(e.get("mismatches", 0) for e in entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps({"config": config, "total_mismatches": mismatches, "results": entries}, indent=2) + "\n")
    tmp.replace(path)
    return path, mismatches


def _model_and_data(cfg: Config):
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model)
    return loaded, build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)


def run_verification(cfg: Config, program: Path | None = None) -> tuple[Path, int]:
    """Verify every configured (method, bits) into verify.json, or the saved `program` on the config's data
    into verify-<program stem>.json; returns the file's path and the total mismatches."""
    loaded, data = _model_and_data(cfg)
    images = first_eval_images(data, cfg)
    folder = Path(cfg.out) / cfg.name
    if program is not None:
        return _write(folder / f"verify-{program.stem}.json", cfg.to_dict(),
                      [_verify_saved(read_program(program), str(program), images, {"program": str(program)})])
    calib = [images for images, _ in data.batches("calib", cfg.data.batch_size)]
    entries = []
    for bits, method in bar([(b, m) for b in cfg.quant.bits for m in cfg.quant.methods], "verify",
                            len(cfg.quant.bits) * len(cfg.quant.methods), unit="configuration"):
        with step(f"{method} {bits}"):
            entries.append(_verify_one(loaded.model, cfg, method, bits, calib, images, folder / PROGRAMS_FOLDER))
    return _write(folder / "verify.json", cfg.to_dict(), entries)


def verify_run(folder: Path) -> tuple[Path, int]:
    """Verify a finished run's saved programs on its config's first `verify.images` eval images, without
    calibrating; writes the run's verify.json and returns its path and the total mismatches."""
    folder = Path(folder)
    results = load_results(folder)
    cfg = config_from_dict(results["config"], f"{folder / 'results.json'}: config")
    _, data = _model_and_data(cfg)
    images = first_eval_images(data, cfg)
    entries = []
    for result in bar(results["results"], "verify", len(results["results"]), unit="program"):
        entry = {"method": result["method"], "bits": result["bits"]}
        if not result["integer_evaluation"].get("exported"):
            entries.append({**entry, **result["integer_evaluation"]})
            continue
        entries.append(_verify_saved(run_program(folder, result), f"{entry['method']} {entry['bits']}", images, entry))
    return _write(folder / "verify.json", results["config"], entries)
