"""`adfq-sim verify`: export each (method, bits) to an IntegerProgram and compare, tensor by tensor,
the Numba simulator's codes with the integer-faithful PyTorch mode's (the bar: zero mismatches).

Writes `<out>/<name>/verify.json` atomically (beside a run's results, without touching them). A
(method, bits) whose quantizers the exporter cannot express yet is reported as not exported, with
the reason; it is not counted as a mismatch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from adfq_sim.config import Config, parse_bits
from adfq_sim.data.sources import build_data_source
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.faithful import run_faithful
from adfq_sim.intsim.program import UnsupportedProgramError, export
from adfq_sim.intsim.verify import format_table, total_mismatches, verify
from adfq_sim.models.loading import load_model
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.recipes import build_recipe

log = logging.getLogger("adfq_sim")


def _verify_one(model: torch.nn.Module, cfg: Config, method: str, bits: str, calib: list[torch.Tensor],
                images: torch.Tensor) -> dict:
    w_bits, a_bits = parse_bits(bits)
    qmodel = quantize_model(model, build_recipe(method, cfg.quant), w_bits, a_bits, calib)
    entry = {"method": method, "bits": bits}
    try:
        program = export(qmodel, calib)
    except UnsupportedProgramError as exc:
        log.info("%s %s: not exported (%s)", method, bits, exc)
        return {**entry, "exported": False, "reason": str(exc)}
    _, simulated = run_simulator(program, images)
    _, faithful = run_faithful(program, images)
    reports = verify(simulated, faithful)
    log.info("%s %s: simulator vs integer-faithful fake-quant\n%s", method, bits, format_table(reports))
    return {**entry, "exported": True, "images": len(images), "mismatches": total_mismatches(reports),
            "layers": [r.as_dict() for r in reports]}


def run_verification(cfg: Config) -> tuple[Path, int]:
    """Verify every configured (method, bits); returns verify.json's path and the total mismatches."""
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model)
    data = build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)
    calib = [images for images, _ in data.batches("calib", cfg.data.batch_size)]
    images = torch.cat([images for images, _ in data.batches("eval", cfg.data.batch_size)])[:cfg.verify.images]
    entries = [_verify_one(loaded.model, cfg, method, bits, calib, images)
               for bits in cfg.quant.bits for method in cfg.quant.methods]
    mismatches = sum(e.get("mismatches", 0) for e in entries)
    folder = Path(cfg.out) / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "verify.json"
    tmp = folder / f".verify.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps({"config": cfg.to_dict(), "total_mismatches": mismatches, "results": entries},
                              indent=2) + "\n")
    tmp.replace(path)
    return path, mismatches
