"""One cell of a run, one (method, bits), computed in parts that any executor can place anywhere.

`calibrate` quantizes and exports; `evaluate_range` runs the fake-quant model (and the integer program
beside it) on one range of eval images; `check_program` verifies the program code for code and prices
it; `assemble` turns the parts into the cell's results entry. Each part depends on the run's context
and its arguments alone, never on what ran before it in the process, so a cell computed alone, after
other cells or on a Ray worker (with the same thread count) gives the same entry.

Evaluation ranges are whole batches of `data.batch_size` images, so every image is evaluated in the
same batch whatever the number of ranges: float results are equal however the evaluation is split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from adfq_sim.config import Config
from adfq_sim.distributions import quantizer_forms
from adfq_sim.evaluate import agreement, fmt, sqnr_db, top1
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.intsim.verify import total_mismatches
from adfq_sim.progress import step
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.options import parse_bits
from adfq_sim.runs.context import RunContext
from adfq_sim.verification import compare_codes, first_eval_images, try_export
from hw_models.cost import cost
from hw_models.workload import workload

log = logging.getLogger("adfq_sim")


@dataclass(frozen=True)
class Cell:
    method: str
    bits: str

    @property
    def key(self) -> str:
        """The cell's file name stem in the run's working folder."""
        return f"{self.method}_{self.bits}"

    @property
    def label(self) -> str:
        return f"{self.method} {self.bits}"


def run_cells(cfg: Config) -> list[Cell]:
    """The config's cells in results order: bit-widths outer, methods inner."""
    return [Cell(method, bits) for bits in cfg.quant.bits for method in cfg.quant.methods]


def eval_ranges(images: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Up to `shards` contiguous (start, stop) ranges of whole batches covering `images`, as even as can be."""
    batches = -(-images // batch_size)
    shards = max(1, min(shards, batches))
    bounds = [round(i * batches / shards) * batch_size for i in range(shards + 1)]
    return [(start, min(stop, images)) for start, stop in zip(bounds, bounds[1:])]


@dataclass
class Calibration:
    """What calibration tells about a cell besides its model and program (small, JSON-ready)."""
    cell: Cell
    export: dict  # {"exported": True} or {"exported": False, "reason": ...}
    optimization: Optional[dict]
    quantizers: dict
    calib_outliers: dict[str, Optional[float]]  # PPOQ's sparse-path ratio on the calibration images
    calibrate_s: float
    export_s: float


def calibrate(ctx: RunContext, cell: Cell) -> tuple[QuantModel, Optional[IntegerProgram], Calibration]:
    """Calibrate the cell's method at its bits on the calibration images and export its integer program."""
    torch.manual_seed(ctx.cfg.seed)  # whatever consumed random numbers before, this cell starts the same
    w_bits, a_bits = parse_bits(cell.bits)
    start = time.perf_counter()
    with step(cell.label):
        qmodel = quantize_model(ctx.model, build_recipe(cell.method, ctx.cfg.quant), w_bits, a_bits,
                                ctx.calib_batches)
        calibrate_s = time.perf_counter() - start
        with step("export"):
            program, exported = try_export(qmodel, ctx.calib_batches, cell.label)
    summary = Calibration(cell, exported, qmodel.optimization_report, quantizer_forms(qmodel, ctx.distributions),
                          qmodel.calib_outlier_ratios(), calibrate_s, time.perf_counter() - start - calibrate_s)
    return qmodel, program, summary


@dataclass
class Evaluation:
    """Logits (float64) of a range of eval images or of all of them, with what was counted on the way."""
    start: int
    stop: int
    logits: torch.Tensor
    labels: Optional[torch.Tensor]
    integer_logits: Optional[torch.Tensor] = None
    outliers: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    integer_seconds: float = 0.0


@torch.no_grad()
def evaluate_range(ctx: RunContext, model: torch.nn.Module, program: Optional[IntegerProgram], start: int, stop: int,
                   on_images: Optional[Callable[[int], None]] = None) -> Evaluation:
    """`model`'s logits on eval images [start, stop), and the integer program's beside them (one read of
    the images feeds both); `on_images` hears of every batch done."""
    if isinstance(model, QuantModel):
        model.reset_outlier_counters()
    logits, labels, integer = [], [], []
    seconds = integer_seconds = 0.0
    for images, batch_labels in ctx.data.batches("eval", ctx.cfg.data.batch_size, start, stop):
        if program is not None:
            begin = time.perf_counter()
            integer.append(torch.as_tensor(run_simulator(program, images)[0], dtype=torch.float64))
            integer_seconds += time.perf_counter() - begin
        begin = time.perf_counter()
        out = model(images)
        seconds += time.perf_counter() - begin
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"eval images {start}-{stop}: non-finite logits")
        logits.append(out.double())
        if batch_labels is not None:
            labels.append(batch_labels)
        if on_images is not None:
            on_images(len(images))
    return Evaluation(start, stop, torch.cat(logits), torch.cat(labels) if labels else None,
                      torch.cat(integer) if integer else None,
                      model.outlier_counts() if isinstance(model, QuantModel) else {}, seconds, integer_seconds)


def merge(parts: list[Evaluation]) -> Evaluation:
    """The ranges joined in image order (their counts and times summed)."""
    parts = sorted(parts, key=lambda p: p.start)
    if any(a.stop != b.start for a, b in zip(parts, parts[1:])):
        raise ValueError("evaluation ranges do not tile the eval set")

    def cat(values: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        return None if values[0] is None else torch.cat(values)

    outliers: dict[str, tuple[int, int]] = {}
    for part in parts:
        for name, (count, seen) in part.outliers.items():
            total = outliers.get(name, (0, 0))
            outliers[name] = (total[0] + count, total[1] + seen)
    return Evaluation(parts[0].start, parts[-1].stop, cat([p.logits for p in parts]), cat([p.labels for p in parts]),
                      cat([p.integer_logits for p in parts]), outliers, sum(p.seconds for p in parts),
                      sum(p.integer_seconds for p in parts))


def check_program(ctx: RunContext, program: IntegerProgram) -> dict:
    """The program verified code for code against the integer-faithful mode on the first
    `verify.images` eval images, and priced on each accelerator with PPOQ outliers at the rate measured
    there: {"verify": ..., "cost": {accelerator: ...}, "seconds": ...}."""
    start = time.perf_counter()
    images = first_eval_images(ctx.data, ctx.cfg)
    with step(f"verify {program.model} program"):
        reports, outliers = compare_codes(program, images)
    verified = {"images": len(images), "tensors": len(reports), "mismatches": total_mismatches(reports),
                "outliers": outliers, "layers": [r.as_dict() for r in reports]}
    per_image = {name: n / len(images) for name, n in outliers["per_tensor"].items()}
    load = workload(program, per_image)
    costs = {spec.name: cost(load, spec).to_dict() for spec in ctx.specs}
    return {"verify": verified, "cost": costs, "seconds": time.perf_counter() - start}


def fp32_entry(fp32: Evaluation) -> dict:
    return {"top1": top1(fp32.logits, fp32.labels), "timings": {"eval_s": fp32.seconds}}


def assemble(summary: Calibration, quantized: Evaluation, checked: Optional[dict], fp32: Evaluation) -> dict:
    """The cell's results entry (the layout docs/results-schema.md describes)."""
    cell = summary.cell
    w_bits, a_bits = parse_bits(cell.bits)
    labels = fp32.labels
    integer = dict(summary.export)
    if checked is not None:
        logits = quantized.integer_logits
        integer.update(top1=top1(logits, labels), agreement=agreement(logits, fp32.logits),
                       agreement_with_fake_quant=agreement(logits, quantized.logits), verify=checked["verify"])
        log.info("%s: integer simulator top1 %s; %d mismatched codes against the integer-faithful mode over %d "
                 "tensors", cell.label, fmt(integer["top1"]), checked["verify"]["mismatches"],
                 checked["verify"]["tensors"])
    outlier_ratio = {name: {"calib": ratio, "eval": count / seen if seen else None}
                     for name, ratio in summary.calib_outliers.items()
                     for count, seen in [quantized.outliers.get(name, (0, 0))]}
    return {
        "method": cell.method,
        "bits": cell.bits,
        "w_bits": w_bits,
        "a_bits": a_bits,
        "top1": top1(quantized.logits, labels),
        "agreement": agreement(quantized.logits, fp32.logits),
        "sqnr_db": sqnr_db(quantized.logits, fp32.logits),
        "outlier_ratio": outlier_ratio,
        "optimization": summary.optimization,
        "quantizers": summary.quantizers,
        "integer_evaluation": integer,
        "cost": None if checked is None else checked["cost"],
        "timings": {"calibrate_s": summary.calibrate_s, "eval_s": quantized.seconds,
                    "integer_s": summary.export_s + quantized.integer_seconds
                    + (0.0 if checked is None else checked["seconds"])},
    }
