"""`adfq-sim export-workload`: every configured (method, bits) exported and written in a peer tool's format.

The GEMMs come from the IntegerProgram (`hw_models.workload`), the hardware files from the accelerator
specs, so Timeloop, ZigZag and SCALE-Sim see what our cost model prices (the format modules say what
each cannot express). Writes `<out>/<name>/workloads/<format>/<method>_<bits>/`, the whole format folder
built aside and moved into place at the end (no half-written folder).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from adfq_sim.config import Config
from adfq_sim.data.sources import build_data_source
from adfq_sim.models.loading import load_model
from adfq_sim.verification import calibrated_program
from hw_models import export_scalesim, export_timeloop, export_zigzag
from hw_models.spec import AcceleratorSpec, load_specs
from hw_models.workload import Workload, workload

log = logging.getLogger("adfq_sim")

EXPORT_FORMATS: dict[str, Callable[[Workload, AcceleratorSpec, str], dict[str, str]]] = {
    "timeloop": export_timeloop.files, "zigzag": export_zigzag.files, "scalesim": export_scalesim.files}


def write_files(folder: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_export(cfg: Config, fmt: str) -> Path:
    """Write every configured (method, bits) in `fmt` with each accelerator's hardware file (the config's
    accelerators); returns the format folder."""
    specs = load_specs(cfg.hardware)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model)
    data = build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)
    calib = [images for images, _ in data.batches("calib", cfg.data.batch_size)]
    target = Path(cfg.out) / cfg.name / "workloads" / fmt
    staging = target.parent / f".{fmt}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for bits in cfg.quant.bits:
            for method in cfg.quant.methods:
                program, _ = calibrated_program(loaded.model, cfg, method, bits, calib)
                if program is None:
                    log.info("%s %s: not exported, no workload to write", method, bits)
                    continue
                load = workload(program)
                for spec in specs:
                    write_files(staging / f"{method}_{bits}",
                                EXPORT_FORMATS[fmt](load, spec, f"{method}_{bits}_{spec.name}"))
                log.info("%s %s: %d GEMMs written for %s", method, bits, len(load.gemms),
                         ", ".join(s.name for s in specs))
    except BaseException:  # an error or Ctrl-C: no staging folder left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = target.parent / f".{fmt}.old-{os.getpid()}"
        target.replace(old)
        staging.replace(target)
        shutil.rmtree(old)
    else:
        staging.replace(target)
    return target
