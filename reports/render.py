"""Render a run folder's report: plots/ (PNG and SVG), report.md and report.html, from results.json alone.

`adfq-sim run` calls this once its run folder is in place; `adfq-sim report RUN_DIR` calls it again
later without recomputing anything. The plots are drawn into a hidden temporary folder that replaces
plots/ only when complete, then each report file is written under a temporary name and renamed: no file
is ever half written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from adfq_sim.errors import UserInputError
from adfq_sim.rundir import RESULTS_SCHEMA_VERSION, atomic_run_dir
from reports import plots, report
from reports.document import to_html, to_markdown

log = logging.getLogger("adfq_sim")
REPORT_FILES = ("report.md", "report.html")


def load_results(folder: Path) -> dict:
    """A run folder's results.json; a missing folder or file, bad JSON or another schema version is a
    UserInputError naming the path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: no such run folder")
    path = folder / "results.json"
    if not path.is_file():
        raise UserInputError(f"{path}: no results.json in the run folder (is it an `adfq-sim run` folder?)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc})") from None
    version = results.get("schema_version") if isinstance(results, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        raise UserInputError(f"{path}: results schema version {version!r}, this adfq-sim renders version "
                             f"{RESULTS_SCHEMA_VERSION} (re-run the config)")
    return results


def render(folder: Path) -> list[Path]:
    """Write plots/, report.md and report.html into the run folder `folder`; returns the report files."""
    folder = Path(folder)
    results = load_results(folder)
    specs = report.plot_specs(results)
    with atomic_run_dir(folder / report.PLOTS_FOLDER) as plot_folder:
        for spec in specs:
            plots.save_figure(spec.make(), plot_folder, spec.stem)
    blocks = report.build(results, specs)
    texts = {"report.md": to_markdown(blocks),
             "report.html": to_html(blocks, f"adfq-sim report: {results['config']['name']}", folder)}
    for name, text in texts.items():
        tmp = folder / f".{name}.partial-{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(folder / name)
    log.info("rendered %s and %d plots", " and ".join(REPORT_FILES), len(specs))
    return [folder / n for n in REPORT_FILES]
