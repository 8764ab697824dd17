"""The local executor: every cell in this process, one after another (the default; Ray is not imported)."""

from __future__ import annotations

from typing import Callable, Optional

from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.runs.cells import (Cell, Evaluation, assemble, calibrate, check_program, eval_ranges, evaluate_range,
                                 merge)
from adfq_sim.runs.context import RunContext
from adfq_sim.runs.progress import RunProgress


class LocalExecutor:
    """`eval_shards` ranges are evaluated one after another: the same split as on Ray, so a test can hold
    the split to the unsplit result without a cluster."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.ranges = eval_ranges(ctx.eval_images, ctx.cfg.data.batch_size, ctx.cfg.executor.eval_shards or 1)

    @property
    def shards(self) -> int:
        return len(self.ranges)

    def evaluate_fp32(self, progress: RunProgress) -> Evaluation:
        return merge([evaluate_range(self.ctx, self.ctx.model, None, a, b, progress.images) for a, b in self.ranges])

    def run_cells(self, cells: list[Cell], fp32: Evaluation, progress: RunProgress,
                  on_done: Callable[[Cell, dict, Optional[IntegerProgram]], None]) -> None:
        for cell in cells:
            qmodel, program, summary = calibrate(self.ctx, cell)
            quantized = merge([evaluate_range(self.ctx, qmodel, program, a, b, progress.images) for a, b in self.ranges])
            checked = None if program is None else check_program(self.ctx, program)
            on_done(cell, assemble(summary, quantized, checked, fp32), program)

    def close(self) -> None:
        pass
