"""`adfq-sim cost`: every (method, bits) priced on each accelerator, per layer, from a config or a run.

From a config (`--config`) each (method, bits) is calibrated and exported first, PPOQ outliers counted
by the integer simulator on the first `verify.images` eval images. From a finished run folder (RUN_DIR)
nothing is recomputed: the run's saved programs (`programs/*.npz`) are priced with the outlier counts
its verification measured. Either way the output is one `cost-<accelerator>.json` per accelerator in
the folder, written atomically, so pricing on another accelerator never replaces an earlier output.
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
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.models.loading import load_model
from adfq_sim.progress import bar, step
from adfq_sim.verification import calibrated_program, first_eval_images, run_program
from hw_models.cost import COMPONENTS, Cost, cost
from hw_models.spec import AcceleratorSpec, load_specs
from hw_models.workload import workload
from reports.render import load_results

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


def _priced(program: IntegerProgram, outliers_per_image: dict[str, float], specs: list[AcceleratorSpec],
            entry: dict) -> dict[str, dict]:
    """The program priced on each accelerator: {accelerator: entry with the cost summary and layers}."""
    load = workload(program, outliers_per_image)
    priced = {}
    for spec in specs:
        result = cost(load, spec)
        summary = result.to_dict()
        log.info("%s %s on %s (%.3f mm2): %.2f uJ, %.3f ms per inference\n%s", entry["method"], entry["bits"],
                 spec.name, summary["area_mm2"], summary["energy_per_inference_uj"], summary["latency_ms"],
                 format_cost_table(result))
        priced[spec.name] = {**entry, **summary}
    return priced


def _write(folder: Path, config: dict, specs: list[AcceleratorSpec], entries: list[dict[str, dict] | dict]) -> list[Path]:
    """One cost-<accelerator>.json per accelerator; an entry not exported (a plain dict with `exported`
    false) appears in every file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        results = [e if e.get("exported") is False else e[spec.name] for e in entries]
        path = folder / f"cost-{spec.name}.json"
        tmp = folder / f".{path.name}.partial-{os.getpid()}"
        tmp.write_text(json.dumps({"config": config, "hardware": spec.to_dict(), "components": list(COMPONENTS),
                                   "results": results}, indent=2) + "\n")
        tmp.replace(path)
        paths.append(path)
    return paths


def run_cost(cfg: Config) -> list[Path]:
    """Calibrate, export and price every configured (method, bits) on the config's accelerators; returns
    the cost files' paths."""
    specs = load_specs(cfg.hardware)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model)
    data = build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)
    calib = [images for images, _ in data.batches("calib", cfg.data.batch_size)]
    images = first_eval_images(data, cfg)
    entries: list[dict] = []
    for bits, method in bar([(b, m) for b in cfg.quant.bits for m in cfg.quant.methods], "cost",
                            len(cfg.quant.bits) * len(cfg.quant.methods), unit="configuration"):
        with step(f"{method} {bits}"):
            program, entry = calibrated_program(loaded.model, cfg, method, bits, calib)
            entries.append(entry if program is None else _priced(program, _outliers_per_image(program, images),
                                                                 specs, entry))
    return _write(Path(cfg.out) / cfg.name, cfg.to_dict(), specs, entries)


def cost_run(folder: Path, hardware: str | None) -> list[Path]:
    """Price a finished run's saved programs on `hardware` (default: the run's accelerators) with the
    outlier counts its verification measured; nothing is calibrated. Returns the cost files' paths."""
    folder = Path(folder)
    results = load_results(folder)
    specs = load_specs(results["config"]["hardware"] if hardware is None else hardware)
    entries: list[dict] = []
    for result in results["results"]:
        entry = {"method": result["method"], "bits": result["bits"]}
        integer = result["integer_evaluation"]
        if not integer.get("exported"):
            entries.append({**entry, "exported": False, "reason": integer.get("reason", "not exported")})
            continue
        program = run_program(folder, result)
        verified = integer["verify"]
        per_image = {name: n / verified["images"] for name, n in verified["outliers"]["per_tensor"].items()}
        entries.append(_priced(program, per_image, specs, {**entry, "exported": True}))
    return _write(folder, results["config"], specs, entries)
