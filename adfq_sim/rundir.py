"""Run folders written atomically: built under a hidden temporary name, renamed into place at the end.

A failed run removes its temporary folder (and the `out` folder if the run created it), so an error
never leaves a half-written run folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

# results.json's layout; `adfq-sim report` renders only this version. 2: per-accelerator costs with
# per-layer rows, per-tensor verification, quantizer forms and activation histograms; 3: quality `flags`
# (and the run folder keeps each program under programs/).
RESULTS_SCHEMA_VERSION = 3


@contextlib.contextmanager
def atomic_run_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `final`, on any exception it is removed."""
    final = Path(final)
    created_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_parent:
            with contextlib.suppress(OSError):
                final.parent.rmdir()
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
