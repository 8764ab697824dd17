"""A redirected run is never silent: the heartbeat logs the running steps, with their counts, at least
every LOG_INTERVAL_S seconds, and nothing once they are done."""

from __future__ import annotations

import logging
import time

import pytest

from adfq_sim import progress


def test_heartbeat_names_the_running_steps_with_their_counts(monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    caplog.set_level(logging.INFO, logger="adfq_sim")
    with progress.heartbeat():
        with progress.step("calibrate adfq w4a4"):
            for _ in progress.bar(range(3), "ASMO blocks.0.mlp", 3, unit="it"):
                time.sleep(0.15)
        lines_during = len(caplog.records)
        time.sleep(0.15)
    messages = [r.getMessage() for r in caplog.records]
    assert any("calibrate adfq w4a4 > ASMO blocks.0.mlp 1/3 it" in m for m in messages), messages
    assert any("ASMO blocks.0.mlp 2/3 it" in m for m in messages), messages
    assert lines_during >= 3 and all(m.startswith("[") and " s] " in m for m in messages)
    assert progress.running() == ""  # every step left the list
    assert any(m.endswith("working") for m in messages[lines_during:])  # nothing running: still a line


def test_steps_leave_the_list_on_errors() -> None:
    with pytest.raises(RuntimeError):
        with progress.step("outer"):
            for _ in progress.bar([1, 2], "inner", 2):
                raise RuntimeError("boom")
    assert progress.running() == ""


def test_the_run_step_counts_images_with_its_bar_off() -> None:
    from adfq_sim.runs.progress import RunProgress

    run = RunProgress(eval_images=10, cells=2, done_cells=0, fp32_done=True)
    try:
        run.images(4)
        run.cell_done()
        assert progress.running() == "run 14/30 img, cells 1/2"
    finally:
        run.close()
    assert progress.running() == ""
