"""Progress that a log file sees too.

On a terminal tqdm draws bars. Elsewhere (output redirected to a file, a CI log, a batch job) the bars
are off, so `heartbeat` runs a thread that logs the steps now running, with their counts, at least every
LOG_INTERVAL_S seconds: a long calibration, search, ASMO, export or verification is never silent.
Steps nest (a run's cell, its calibration, ASMO's module), and each line names them outermost first.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

log = logging.getLogger("adfq_sim")
T = TypeVar("T")

# A redirected run logs what it is doing at least this often (seconds).
LOG_INTERVAL_S = 30.0

_lock = threading.Lock()
_running: list[list[str]] = []  # [description, status] of each running step, outermost first


@contextlib.contextmanager
def step(description: str) -> Iterator[Callable[[str], None]]:
    """Mark `description` as running for the heartbeat; the yielded function sets its status."""
    entry = [description, ""]
    with _lock:
        _running.append(entry)

    def status(text: str) -> None:
        entry[1] = text

    try:
        yield status
    finally:
        with _lock:
            _running.remove(entry)


def bar(items: Iterable[T], description: str, total: Optional[int] = None, unit: str = "it",
        leave: bool = True) -> Iterator[T]:
    """`items` with a tqdm bar on a terminal, counted for the heartbeat everywhere."""
    with step(description) as status:
        status(f"0/{total if total is not None else '?'} {unit}")
        for done, item in enumerate(tqdm(items, total=total, desc=description, unit=unit, disable=None,
                                         leave=leave), 1):
            yield item
            status(f"{done}/{total if total is not None else '?'} {unit}")


def running() -> str:
    """The running steps, outermost first: 'run 64/450 img > calibrate adfq w4a4 > ASMO blocks.2.mlp 80/200 it'."""
    with _lock:
        return " > ".join(f"{description} {status}".strip() for description, status in _running)


@contextlib.contextmanager
def heartbeat() -> Iterator[None]:
    """While the body runs, log the running steps every LOG_INTERVAL_S seconds where stderr is not a
    terminal (on a terminal the bars show them)."""
    if sys.stderr.isatty():
        yield
        return
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(LOG_INTERVAL_S):
            log.info("[%.0f s] %s", time.monotonic() - start, running() or "working")

    thread = threading.Thread(target=beat, name="adfq-sim heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
