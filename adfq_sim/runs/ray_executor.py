"""The Ray executor: cells as Ray tasks, each cell's evaluation sharded over workers by image ranges.

Per cell: one task calibrates and exports (with a GPU where ASMO runs on CUDA); its quantized model stays
in Ray's object store and its integer program travels as its `.npz` bytes to one task per eval range
(fake-quant and integer simulator side by side) and to one task that verifies and prices the program.
The driver merges the ranges in image order and writes each cell as it finishes. Every task sets the
run's thread count first (Ray starts workers with one OpenMP thread), and each worker builds the run's
context (model, data) once and reuses it.

Imported only by a run whose executor is `ray`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import ray
from ray.exceptions import RayTaskError

from adfq_sim.config import Config
from adfq_sim.errors import UserInputError
from adfq_sim.intsim.program import IntegerProgram, program_bytes, program_from_bytes
from adfq_sim.runs.cells import (Calibration, Cell, Evaluation, assemble, calibrate, check_program, eval_ranges,
                                 evaluate_range, merge)
from adfq_sim.runs.context import RunContext, build_context
from adfq_sim.threads import apply_threads

log = logging.getLogger("adfq_sim")

_worker_context: Optional[tuple[str, RunContext]] = None


def _context(cfg: Config, threads: int) -> RunContext:
    """This worker's context for the run (built on its first task)."""
    global _worker_context
    apply_threads(threads)
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if _worker_context is None or _worker_context[0] != key:
        _worker_context = (key, build_context(cfg))
    return _worker_context[1]


@ray.remote(num_returns=3)
def _calibrate_task(cfg: Config, threads: int, cell: Cell) -> tuple[Any, Optional[bytes], Calibration]:
    qmodel, program, summary = calibrate(_context(cfg, threads), cell)
    return qmodel, None if program is None else program_bytes(program), summary


@ray.remote
def _evaluate_task(cfg: Config, threads: int, model: Any, program: Optional[bytes], start: int, stop: int
                   ) -> Evaluation:
    ctx = _context(cfg, threads)
    return evaluate_range(ctx, ctx.model if model is None else model,
                          None if program is None else program_from_bytes(program), start, stop)


@ray.remote
def _check_task(cfg: Config, threads: int, program: bytes) -> dict:
    return check_program(_context(cfg, threads), program_from_bytes(program))


def _absolute_paths(cfg: Config) -> Config:
    """The config with its files named absolutely: workers need not share the driver's working folder."""
    model, data = cfg.model, cfg.data
    if model.checkpoint is not None:
        model = replace(model, checkpoint=str(Path(model.checkpoint).resolve()))
    if data.root is not None:
        data = replace(data, root=str(Path(data.root).resolve()))
    return replace(cfg, model=model, data=data)


def _get(ref: Any) -> Any:
    """A task's result; a task's bad-input error surfaces as itself (one line), not as Ray's wrapper."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        if isinstance(exc.cause, (UserInputError, FloatingPointError)):
            raise exc.cause from None
        raise


class RayExecutor:
    def __init__(self, ctx: RunContext, threads: int) -> None:
        self.ctx, self.threads = ctx, threads
        address = ctx.cfg.executor.address
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=os.environ.get("ADFQ_SIM_RAY_WORKER_LOGS") == "1", ignore_reinit_error=True)
        resources = ray.cluster_resources()
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if threads > largest:
            ray.shutdown()
            raise UserInputError(f"executor.threads: {threads} threads per task, but no Ray node has more than "
                                 f"{largest:g} CPUs")
        self.gpus = resources.get("GPU", 0)
        if "adfq" in ctx.cfg.quant.methods and ctx.cfg.quant.adfq.device == "cuda" and not self.gpus:
            ray.shutdown()
            raise UserInputError("quant.adfq.device: cuda, but the Ray cluster has no GPU")
        slots = int(resources.get("CPU", 1) // threads)
        self.ranges = eval_ranges(ctx.eval_images, ctx.cfg.data.batch_size, ctx.cfg.executor.eval_shards or slots)
        self.cfg = _absolute_paths(ctx.cfg)
        log.info("ray %s: %g CPUs, %g GPUs; %d threads per task, %d eval shards", ray.__version__,
                 resources.get("CPU", 0), self.gpus, threads, len(self.ranges))

    @property
    def shards(self) -> int:
        return len(self.ranges)

    def _options(self) -> dict:
        return {"num_cpus": self.threads}

    def _calibration_options(self, cell: Cell) -> dict:
        """A GPU for the calibration that runs ASMO on CUDA (adfq with device cuda, or auto on a GPU cluster)."""
        device = self.cfg.quant.adfq.device
        wants_gpu = cell.method == "adfq" and (device == "cuda" or (device == "auto" and self.gpus > 0))
        return {**self._options(), "num_gpus": 1 if wants_gpu else 0}

    def _evaluate(self, model: Any, program: Any) -> list[Any]:
        return [_evaluate_task.options(**self._options()).remote(self.cfg, self.threads, model, program, a, b)
                for a, b in self.ranges]

    def evaluate_fp32(self, progress: Any) -> Evaluation:
        pending = self._evaluate(None, None)
        parts = []
        while pending:
            (ready,), pending = ray.wait(pending, num_returns=1)
            part = _get(ready)
            progress.images(part.stop - part.start)
            parts.append(part)
        return merge(parts)

    def run_cells(self, cells: list[Cell], fp32: Evaluation, progress: Any,
                  on_done: Callable[[Cell, dict, Optional[IntegerProgram]], None]) -> None:
        """All cells at once: Ray schedules their tasks on the free CPUs; each cell (its entry and program)
        is handed to `on_done` as soon as its last task finishes."""
        calibrations = {}
        for cell in cells:
            qmodel, program, summary = _calibrate_task.options(**self._calibration_options(cell)).remote(
                self.cfg, self.threads, cell)
            calibrations[summary] = (cell, qmodel, program)
        state: dict[Cell, dict] = {}
        owner: dict[Any, tuple[Cell, str]] = {summary: (cell, "calibration") for summary, (cell, *_) in calibrations.items()}
        while owner:
            (ready,), _ = ray.wait(list(owner), num_returns=1)
            cell, kind = owner.pop(ready)
            result = _get(ready)
            if kind == "calibration":
                _, qmodel, program = calibrations.pop(ready)
                exported = result.export["exported"]
                shards = self._evaluate(qmodel, program if exported else None)
                state[cell] = {"summary": result, "parts": [], "waiting": len(shards) + exported, "checked": None,
                               "program": program if exported else None}
                owner.update({ref: (cell, "shard") for ref in shards})
                if exported:
                    owner[_check_task.options(**self._options()).remote(self.cfg, self.threads, program)] = (cell, "check")
                continue
            entry = state[cell]
            if kind == "shard":
                entry["parts"].append(result)
                progress.images(result.stop - result.start)
            else:
                entry["checked"] = result
            entry["waiting"] -= 1
            if entry["waiting"] == 0:
                del state[cell]
                program = None if entry["program"] is None else program_from_bytes(_get(entry["program"]))
                on_done(cell, assemble(entry["summary"], merge(entry["parts"]), entry["checked"], fp32), program)

    def close(self) -> None:
        ray.shutdown()
