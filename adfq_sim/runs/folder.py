"""A run's working folder: finished cells kept on disk as they finish, so no crash loses them.

A run works in `<out>/.<name>.partial/`: `run.json` (the config the cells were computed from),
`fp32.pt` (the FP32 reference logits), `cells/<method>_<bits>.json` and each exported cell's integer
program `programs/<method>_<bits>.npz` (with its op listing, `.txt`; written before the cell's entry),
each written atomically (a temporary file renamed into place), so a kill -9 leaves whole files or none.
`--resume` reads them back and computes only the rest; at the end the finished folder replaces
`<out>/<name>/` in one rename, holding only the run's outputs (the programs among them: `adfq-sim cost`
and `verify` read them instead of calibrating again). An existing run or working folder is never
replaced without `--overwrite`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from adfq_sim.errors import UserInputError
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.runs.cells import Cell, Evaluation
from adfq_sim.verification import PROGRAMS_FOLDER, save_with_listing

MODES = ("new", "resume", "overwrite")
_WORK_ONLY = ("run.json", "fp32.pt", "cells", ".lock")


def check_output_parent(parent: Path) -> None:
    """`out` must be a folder or creatable as one: a file on the way is named, not a traceback."""
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserInputError(f"out: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserInputError(f"out: {folder} is not writable")
            return


def write_atomically(path: Path, data: str | bytes) -> None:
    """`path` holds the old content or the new, never a part (temporary file, flushed, renamed)."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fingerprint(config: dict, threads: int) -> dict:
    """What a cell's result depends on: the config less where it runs, plus the thread count."""
    return {**{k: v for k, v in config.items() if k != "executor"}, "executor": {"threads": threads}}


def config_changes(old: Any, new: Any, where: str = "") -> list[str]:
    """Where two config mappings differ, as 'key.path: old -> new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(old.keys() | new.keys(), key=str)
                for change in config_changes(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


class RunFolder:
    """The working folder of one run of one config (see the module docstring)."""

    def __init__(self, final: Path, fingerprint: dict) -> None:
        self.final = final
        self.work = final.parent / f".{final.name}.partial"
        self.fingerprint = fingerprint
        self._created_parent = False
        self._lock: Optional[Any] = None

    # ------------------------------------------------------------------ before any work
    def check(self, mode: str) -> bool:
        """Refuse what would replace or mix up results, in one line; False when a resumed run is already
        complete (nothing to do)."""
        if mode not in MODES:
            raise ValueError(f"unknown run mode {mode!r}; expected one of {MODES}")
        check_output_parent(self.final.parent)
        flags = "pass --resume to continue it or --overwrite to start again"
        if mode == "new":
            if self.work.exists():
                raise UserInputError(f"{self.work}: an interrupted run of this config is there ({flags})")
            if self.final.exists():
                raise UserInputError(f"{self.final} exists (pass --overwrite to replace it, --resume to keep it)")
        elif mode == "resume":
            if self.work.exists():
                self._check_same(self._read_json(self.work / "run.json"), "the interrupted run")
            elif self.final.exists():
                finished = self._read_json(self.final / "results.json")
                threads = finished.get("environment", {}).get("executor", {}).get("threads")
                self._check_same(fingerprint(finished.get("config", {}), threads), "the finished run")
                return False
            else:
                raise UserInputError(f"--resume: there is no run at {self.final} to continue")
        return True

    def _read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{path}: unreadable ({exc}); start again with --overwrite") from None

    def _check_same(self, recorded: dict, what: str) -> None:
        changes = config_changes(recorded, self.fingerprint)
        if changes:
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise UserInputError(f"--resume: the config changed since {what}: {'; '.join(changes[:3])}{more} "
                                 "(restore it, or start again with --overwrite)")

    # ------------------------------------------------------------------ during the run
    def open(self, mode: str) -> None:
        """Create (or, resuming, reopen) the working folder and hold its lock."""
        self._created_parent = not self.final.parent.exists()
        if mode == "overwrite" and self.work.exists():
            self._take_lock(create=False)
            shutil.rmtree(self.work)
            self._release_lock()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "cells").mkdir(exist_ok=True)
        (self.work / PROGRAMS_FOLDER).mkdir(exist_ok=True)
        self._take_lock(create=True)
        write_atomically(self.work / "run.json", json.dumps(self.fingerprint, indent=2) + "\n")

    def _take_lock(self, create: bool) -> None:
        path = self.work / ".lock"
        if not create and not path.exists():
            return
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UserInputError(f"{self.work}: another adfq-sim run is working in this folder") from None
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def read_cells(self) -> dict[str, dict]:
        """The finished cells' entries, by cell key."""
        return {path.stem: json.loads(path.read_text()) for path in sorted((self.work / "cells").glob("*.json"))}

    def write_cell(self, cell: Cell, entry: dict, program: Optional[IntegerProgram]) -> None:
        """The cell's program first, then its entry: a cell read back always has its program."""
        if program is not None:
            save_with_listing(program, self.work / PROGRAMS_FOLDER / cell.key)
        write_atomically(self.work / "cells" / f"{cell.key}.json", json.dumps(entry, indent=2, allow_nan=False) + "\n")

    def read_fp32(self) -> Optional[Evaluation]:
        path = self.work / "fp32.pt"
        if not path.exists():
            return None
        saved = torch.load(path, weights_only=True)
        return Evaluation(0, len(saved["logits"]), saved["logits"], saved["labels"], seconds=float(saved["seconds"]))

    def write_fp32(self, fp32: Evaluation) -> None:
        path = self.work / "fp32.pt"
        tmp = path.with_name(f".fp32.pt.partial-{os.getpid()}")
        torch.save({"logits": fp32.logits, "labels": fp32.labels, "seconds": fp32.seconds}, tmp)
        tmp.replace(path)

    def has_work(self) -> bool:
        return (self.work / "fp32.pt").exists() or any((self.work / "cells").glob("*.json"))

    # ------------------------------------------------------------------ at the end
    def finish(self, outputs: dict[str, str]) -> Path:
        """Write the run's outputs, drop the working files and put the folder in place of `final`."""
        for name, text in outputs.items():
            write_atomically(self.work / name, text)
        for name in _WORK_ONLY:
            path = self.work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists() and name != ".lock":
                path.unlink()
        old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        if self.final.exists():
            self.final.rename(old)
        self.work.rename(self.final)
        (self.final / ".lock").unlink(missing_ok=True)
        self._release_lock()
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abandon(self) -> bool:
        """After a failure: keep the folder if it holds finished work (True), else remove it (and `out` if
        this run created it)."""
        self._release_lock()
        if self.has_work():
            return True
        shutil.rmtree(self.work, ignore_errors=True)
        if self._created_parent:
            with contextlib.suppress(OSError):
                self.final.parent.rmdir()
        return False
