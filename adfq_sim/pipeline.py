"""One run, end to end: model -> data -> FP32 reference -> calibrate + evaluate each (method, bits).

`run_experiment` is the whole job as a plain function; the CLI only parses arguments and calls it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from adfq_sim.config import Config
from adfq_sim.data.sources import DataSource, build_data_source
from adfq_sim.distributions import capture, quantizer_forms
from adfq_sim.environment import environment
from adfq_sim.evaluate import agreement, collect_logits, fmt, sqnr_db, top1
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.models.loading import load_model
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import parse_bits
from adfq_sim.rundir import RESULTS_SCHEMA_VERSION, atomic_run_dir
from adfq_sim.verification import IntegerRun
from hw_models.cost import cost
from hw_models.spec import AcceleratorSpec, load_specs
from hw_models.workload import workload
from reports.render import render
from reports.tables import results_csv

log = logging.getLogger("adfq_sim")


def _batches_total(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


def quantize_and_evaluate(model: torch.nn.Module, data: DataSource, cfg: Config, method: str, bits: str,
                          calib_batches: list[torch.Tensor], fp_logits: torch.Tensor,
                          labels: torch.Tensor | None, specs: list[AcceleratorSpec],
                          distributions: dict | None) -> dict:
    """Calibrate one (method, bits) on the calibration images, compare it with FP32 on the eval set and
    price its integer program on each accelerator."""
    w_bits, a_bits = parse_bits(bits)
    start = time.perf_counter()
    qmodel = quantize_model(model, build_recipe(method, cfg.quant), w_bits, a_bits, calib_batches)
    calibrate_s = time.perf_counter() - start
    integer = IntegerRun(qmodel, calib_batches, cfg.verify.images, f"{method} {bits}")  # exports the program
    exported_s = integer.seconds
    start = time.perf_counter()
    qmodel.reset_outlier_counters()
    q_logits, _ = collect_logits(qmodel, data.batches("eval", cfg.data.batch_size),
                                 _batches_total(data.description["eval_images"], cfg.data.batch_size),
                                 f"eval {method} {bits}", also=integer)
    eval_s = time.perf_counter() - start - (integer.seconds - exported_s)  # the simulator's share is integer_s
    integer_entry = integer.summary(q_logits, labels, fp_logits)
    return {
        "method": method,
        "bits": bits,
        "w_bits": w_bits,
        "a_bits": a_bits,
        "top1": top1(q_logits, labels),
        "agreement": agreement(q_logits, fp_logits),
        "sqnr_db": sqnr_db(q_logits, fp_logits),
        "outlier_ratio": qmodel.outlier_ratios(),
        "optimization": qmodel.optimization_report,
        "quantizers": quantizer_forms(qmodel, distributions),
        "integer_evaluation": integer_entry,
        "cost": _costs(integer.program, integer_entry, specs),
        "timings": {"calibrate_s": calibrate_s, "eval_s": eval_s, "integer_s": integer.seconds},
    }


def _costs(program: IntegerProgram | None, integer: dict, specs: list[AcceleratorSpec]) -> dict | None:
    """One inference of the exported program on each accelerator, by accelerator name: totals and
    per-layer rows (None where there is no program); PPOQ outliers priced at their measured rate on the
    verified images."""
    if program is None:
        return None
    verified = integer["verify"]
    per_image = {name: count / verified["images"] for name, count in verified["outliers"]["per_tensor"].items()}
    load = workload(program, per_image)
    return {spec.name: cost(load, spec).to_dict() for spec in specs}


def _attach_log(folder: Path) -> logging.Handler:
    """run.log gets the run's INFO messages whatever the caller's logging setup."""
    handler = logging.FileHandler(folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def run_experiment(cfg: Config) -> Path:
    """Run the configured experiment and write `<out>/<name>/` (results.json, results.csv, run.log), then
    its plots and reports."""
    started = time.perf_counter()
    final = Path(cfg.out) / cfg.name
    with atomic_run_dir(final) as folder:
        handler = _attach_log(folder)
        try:
            results = _run(cfg)
        finally:
            log.removeHandler(handler)
            handler.close()
        results["timings"] = {"total_s": time.perf_counter() - started}
        _write_text(folder / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
        _write_text(folder / "results.csv", results_csv(results))
    # Rendered once the results are in place: a plotting failure must not take the run's results with it
    # (`adfq-sim report` can draw them again), and the report files are each written atomically.
    start = time.perf_counter()
    render(final)
    log.info("wrote %s (report rendered in %.1f s)", final, time.perf_counter() - start)
    return final


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _run(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    specs = load_specs(cfg.hardware)
    loaded = load_model(cfg.model)
    data = build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)
    log.info("model %s (%s, %d classes); data %s: %d calibration / %d eval images", cfg.model.name,
             loaded.source, loaded.num_classes, cfg.data.kind, data.description["calib_images"],
             data.description["eval_images"])
    bs = cfg.data.batch_size
    start = time.perf_counter()
    fp_logits, labels = collect_logits(loaded.model, data.batches("eval", bs),
                                       _batches_total(data.description["eval_images"], bs), "eval fp32")
    fp32 = {"top1": top1(fp_logits, labels), "timings": {"eval_s": time.perf_counter() - start}}
    # Calibration images are read once and shared by every (method, bits).
    calib_batches = [images for images, _ in data.batches("calib", bs)]
    log.info("fp32: top1 %s", fmt(fp32["top1"]))
    distributions = capture(loaded.model, calib_batches[0])
    entries = []
    for bits in cfg.quant.bits:
        for method in cfg.quant.methods:
            entry = quantize_and_evaluate(loaded.model, data, cfg, method, bits, calib_batches, fp_logits, labels,
                                          specs, distributions)
            log.info("%s %s: top1 %s, agreement %.2f %%, SQNR %s dB", method, bits, fmt(entry["top1"]),
                     entry["agreement"], fmt(entry["sqnr_db"]))
            for c in (entry["cost"] or {}).values():
                log.info("%s %s on %s: %.1f uJ, %.3f ms per inference, %.2f effective TOPS/W", method, bits,
                         c["accelerator"], c["energy_per_inference_uj"], c["latency_ms"], c["effective_tops_per_w"])
            entries.append(entry)
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "environment": environment(),
        "model": {"name": cfg.model.name, "source": loaded.source, "checkpoint": loaded.checkpoint,
                  "num_classes": loaded.num_classes,
                  "parameters": sum(p.numel() for p in loaded.model.parameters())},
        "data": data.description,
        "quantized_ops": QUANTIZED_OPS,
        "hardware": [spec.to_dict() for spec in specs],
        "fp32": fp32,
        "distributions": distributions,
        "results": entries,
    }


# What every fake-quant number in results.json quantizes (printed next to the numbers, as published
# tables differ on this).
QUANTIZED_OPS = {
    "quantized": ["patch_embed GEMM", "qkv", "Q.K^T", "softmax.V", "proj", "fc1", "fc2", "head",
                  "Swin patch-merging reduction"],
    "float": ["LayerNorm", "softmax", "GELU", "residual adds", "class token / position embedding",
              "Swin relative position bias and window mask"],
}
