"""One progress bar for a whole run: eval images done over the FP32 reference and every cell, whichever
executor computes them (cells read back by `--resume` count as done); the same count is the run's step
in the heartbeat's log lines (`adfq_sim.progress`)."""

from __future__ import annotations

import contextlib

from tqdm import tqdm

from adfq_sim.progress import step


class RunProgress:
    def __init__(self, eval_images: int, cells: int, done_cells: int, fp32_done: bool) -> None:
        self.cells, self.done = cells, done_cells
        # counted here too: a disabled bar (output not a terminal) counts nothing
        self.images_done, self.images_total = eval_images * (done_cells + int(fp32_done)), eval_images * (cells + 1)
        self.bar = tqdm(total=self.images_total, initial=self.images_done, desc="run", unit="img", disable=None)
        self._step = contextlib.ExitStack()
        self._status = self._step.enter_context(step("run"))
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"cells {self.done}/{self.cells}")
        self._status(f"{self.images_done}/{self.images_total} img, cells {self.done}/{self.cells}")

    def images(self, count: int) -> None:
        self.images_done += count
        self.bar.update(count)
        self._postfix()

    def cell_done(self) -> None:
        self.done += 1
        self._postfix()

    def close(self) -> None:
        self.bar.close()
        self._step.close()
