"""`adfq-sim cost`: every configured (method, bits) exported and priced on each accelerator, per layer.

Writes `<out>/<name>/cost.json` atomically (beside a run's results, without touching them). PPOQ
outliers are counted by the integer simulator on the first `verify.images` eval images.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from adfq_sim.config import Config
from adfq_sim.data.sources import build_data_source
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.models.loading import load_model
from adfq_sim.verification import calibrated_program
from hw_models.cost import COMPONENTS, Cost, cost
from hw_models.spec import AcceleratorSpec, load_specs
from hw_models.workload import workload

log = logging.getLogger("adfq_sim")


def format_cost_table(result: Cost) -> str:
    """One row per layer (op, kind, MACs, cycles, bound, energy in nJ) and a total line."""
    header = ("layer", "kind", "MACs", "cycles", "bound", "energy nJ")
    rows = [(l.name, l.kind, f"{l.macs:,}", f"{l.cycles:,}", l.bound if l.kind != "vector" else "-",
             f"{sum(l.energy_pj.values()) / 1e3:.2f}") for l in result.layers]
    rows.append(("total", "", f"{result.macs:,}", f"{result.cycles:,}", "", f"{result.total_energy_pj / 1e3:.2f}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 or i == 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def _outliers_per_image(program, images: torch.Tensor) -> dict[str, float]:
    _, codes = run_simulator(program, images)
    return {dense: float(np.count_nonzero(codes[matrix])) / len(images)
            for matrix, dense in program.outlier_tensors().items()}


def _cost_one(model: torch.nn.Module, cfg: Config, specs: list[AcceleratorSpec], method: str, bits: str,
              calib: list[torch.Tensor], images: torch.Tensor) -> list[dict]:
    program, entry = calibrated_program(model, cfg, method, bits, calib)
    label = f"{method} {bits}"
    if program is None:
        return [entry]
    load = workload(program, _outliers_per_image(program, images))
    entries = []
    for spec in specs:
        result = cost(load, spec)
        priced = result.to_dict()
        log.info("%s on %s (%.3f mm2): %.2f uJ, %.3f ms per inference\n%s", label, spec.name, priced["area_mm2"],
                 priced["energy_per_inference_uj"], priced["latency_ms"], format_cost_table(result))
        entries.append({**entry, **priced})
    return entries


def run_cost(cfg: Config) -> Path:
    """Price every configured (method, bits) on the config's accelerators (one entry per accelerator);
    returns cost.json's path."""
    specs = load_specs(cfg.hardware)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model)
    data = build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)
    calib = [images for images, _ in data.batches("calib", cfg.data.batch_size)]
    images = torch.cat([images for images, _ in data.batches("eval", cfg.data.batch_size)])[:cfg.verify.images]
    entries = [e for bits in cfg.quant.bits for method in cfg.quant.methods
               for e in _cost_one(loaded.model, cfg, specs, method, bits, calib, images)]
    folder = Path(cfg.out) / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cost.json"
    tmp = folder / f".cost.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps({"config": cfg.to_dict(), "hardware": [s.to_dict() for s in specs],
                               "components": list(COMPONENTS),
                               "results": entries}, indent=2) + "\n")
    tmp.replace(path)
    return path
