"""One progress bar for a whole run: eval images done over the FP32 reference and every cell, whichever
executor computes them (cells read back by `--resume` count as done)."""

from __future__ import annotations

from tqdm import tqdm


class RunProgress:
    def __init__(self, eval_images: int, cells: int, done_cells: int, fp32_done: bool) -> None:
        self.cells, self.done = cells, done_cells
        initial = eval_images * (done_cells + int(fp32_done))
        self.bar = tqdm(total=eval_images * (cells + 1), initial=initial, desc="run", unit="img", disable=None)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"cells {self.done}/{self.cells}")

    def images(self, count: int) -> None:
        self.bar.update(count)

    def cell_done(self) -> None:
        self.done += 1
        self._postfix()

    def close(self) -> None:
        self.bar.close()
