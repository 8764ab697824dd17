"""One run, end to end: FP32 reference, then every (method, bits) cell, then the report.

`run_experiment` is the whole job as a plain function; the CLI only parses arguments and calls it. The
cells run on the configured executor (`runs.local` or `runs.ray_executor`) and are kept in the run's
working folder as they finish (`runs.folder`), so an interrupted run continues with `--resume`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch

from adfq_sim.config import Config
from adfq_sim.environment import environment
from adfq_sim.errors import UserInputError
from adfq_sim.evaluate import fmt
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.rundir import RESULTS_SCHEMA_VERSION
from adfq_sim.runs.cells import Cell, fp32_entry, run_cells
from adfq_sim.runs.context import RunContext, build_context
from adfq_sim.runs.folder import RunFolder, fingerprint
from adfq_sim.runs.local import LocalExecutor
from adfq_sim.runs.progress import RunProgress
from adfq_sim.threads import run_threads
from reports.render import render
from reports.summary import quality_flags
from reports.tables import results_csv

log = logging.getLogger("adfq_sim")

def _attach_log(folder: Path) -> logging.Handler:
    """run.log gets the run's INFO messages whatever the caller's logging setup (appended on --resume)."""
    handler = logging.FileHandler(folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def _executor(ctx: RunContext, threads: int):
    """The configured executor; Ray is imported only here, and only when asked for."""
    if ctx.cfg.executor.kind == "local":
        return LocalExecutor(ctx)
    if importlib.util.find_spec("ray") is None:
        raise UserInputError("executor.kind: ray needs Ray, an optional extra: pip install -e \".[ray]\" "
                             "(or pip install \"adfq-sim[ray]\")")
    from adfq_sim.runs.ray_executor import RayExecutor

    return RayExecutor(ctx, threads)


def run_experiment(cfg: Config, mode: str = "new") -> Path:
    """Run the configured experiment into `<out>/<name>/` (results.json, results.csv, run.log, plots and
    reports). `mode`: new (refuses an existing run), resume (continues an interrupted one) or overwrite."""
    started = time.perf_counter()
    threads = cfg.executor.threads or torch.get_num_threads()
    folder = RunFolder(Path(cfg.out) / cfg.name, fingerprint(cfg.to_dict(), threads))
    if not folder.check(mode):
        log.info("nothing to resume: %s is complete", folder.final)
        return folder.final
    with run_threads(threads):
        ctx = build_context(cfg)  # bad model or data files fail here, before the folder exists
        executor = _executor(ctx, threads)
        try:
            folder.open(mode)
            handler = _attach_log(folder.work)
            try:
                results = _run(ctx, executor, folder, threads)
            except BaseException as exc:
                _abandon(folder, exc)
                raise
            finally:
                log.removeHandler(handler)
                handler.close()
        finally:
            executor.close()
    results["timings"] = {"total_s": time.perf_counter() - started}
    final = folder.finish({"results.json": json.dumps(results, indent=2, allow_nan=False) + "\n",
                           "results.csv": results_csv(results)})
    # Rendered once the results are in place: a plotting failure must not take the run's results with it
    # (`adfq-sim report` can draw them again), and the report files are each written atomically.
    start = time.perf_counter()
    render(final)
    log.info("wrote %s (report rendered in %.1f s)", final, time.perf_counter() - start)
    return final


def _abandon(folder: RunFolder, exc: BaseException) -> None:
    """Keep finished work for --resume and say so in the error's one line (or in the log on Ctrl-C)."""
    if not folder.abandon():
        return
    kept = f"finished cells are kept in {folder.work}: continue with --resume"
    if isinstance(exc, UserInputError):
        exc.args = (f"{exc} ({kept})",)
    else:
        log.warning("%s", kept)


def _run(ctx: RunContext, executor, folder: RunFolder, threads: int) -> dict:
    cfg = ctx.cfg
    cells = run_cells(cfg)
    done = folder.read_cells()
    fp32 = folder.read_fp32()
    log.info("model %s (%s, %d classes); data %s: %d calibration / %d eval images; %s executor, %d threads, "
             "%d eval shards", cfg.model.name, ctx.loaded.source, ctx.loaded.num_classes, cfg.data.kind,
             ctx.data.description["calib_images"], ctx.eval_images, cfg.executor.kind, threads, executor.shards)
    if done:
        log.info("resuming: %d of %d cells read back (%s)", len(done), len(cells), ", ".join(sorted(done)))
    progress = RunProgress(ctx.eval_images, len(cells), len(done), fp32 is not None)
    try:
        if fp32 is None:
            fp32 = executor.evaluate_fp32(progress)
            folder.write_fp32(fp32)
        log.info("fp32: top1 %s", fmt(fp32_entry(fp32)["top1"]))

        def finished(cell: Cell, entry: dict, program: Optional[IntegerProgram]) -> None:
            folder.write_cell(cell, entry, program)
            done[cell.key] = entry
            progress.cell_done()
            _log_entry(entry)

        executor.run_cells([c for c in cells if c.key not in done], fp32, progress, finished)
    finally:
        progress.close()
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "environment": {**environment(), "executor": {"kind": cfg.executor.kind, "threads": threads,
                                                      "eval_shards": executor.shards}},
        "model": {"name": cfg.model.name, "source": ctx.loaded.source, "checkpoint": ctx.loaded.checkpoint,
                  "num_classes": ctx.loaded.num_classes,
                  "parameters": sum(p.numel() for p in ctx.model.parameters())},
        "data": ctx.data.description,
        "quantized_ops": QUANTIZED_OPS,
        "hardware": [spec.to_dict() for spec in ctx.specs],
        "fp32": fp32_entry(fp32),
        "distributions": ctx.distributions,
        "results": [done[c.key] for c in cells],
    }
    results["flags"] = quality_flags(results)
    for flag in results["flags"]:
        log.warning("check: %s", flag["message"])
    return results


def _log_entry(entry: dict) -> None:
    method, bits = entry["method"], entry["bits"]
    log.info("%s %s: top1 %s, agreement %.2f %%, SQNR %s dB", method, bits, fmt(entry["top1"]), entry["agreement"],
             fmt(entry["sqnr_db"]))
    for c in (entry["cost"] or {}).values():
        log.info("%s %s on %s: %.1f uJ, %.3f ms per inference, %.2f effective TOPS/W", method, bits,
                 c["accelerator"], c["energy_per_inference_uj"], c["latency_ms"], c["effective_tops_per_w"])


# What every fake-quant number in results.json quantizes (printed next to the numbers, as published
# tables differ on this).
QUANTIZED_OPS = {
    "quantized": ["patch_embed GEMM", "qkv", "Q.K^T", "softmax.V", "proj", "fc1", "fc2", "head",
                  "Swin patch-merging reduction"],
    "float": ["LayerNorm", "softmax", "GELU", "residual adds", "class token / position embedding",
              "Swin relative position bias and window mask"],
}
