"""Thread counts are the run's setting, never a side effect of a library.

Numba's OpenMP threading layer shares the process's OpenMP runtime with torch and sets its thread count
when a parallel kernel launches, so torch's intra-op thread count changes after the first simulator call
(1 -> 2 under OMP_NUM_THREADS=1, measured). Fake-quant results and speed depend on that count, so the
simulator restores it (`torch_threads_kept`), and a run applies its configured count for its duration
(`run_threads`) and on every Ray worker.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numba
import torch


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Whatever runs inside leaves torch's intra-op thread count as it found it."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def apply_threads(threads: int) -> None:
    """torch's intra-op threads and Numba's kernel threads (capped at the pool Numba started with)."""
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def run_threads(threads: int) -> Iterator[None]:
    """`threads` for torch and Numba inside, the caller's counts restored after."""
    before = torch.get_num_threads(), numba.get_num_threads()
    apply_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
