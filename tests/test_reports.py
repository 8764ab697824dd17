"""Reports: every plot and both report files from a real run, re-rendering, hardware comparison, bad input."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adfq_sim.config import load_config
from adfq_sim.errors import UserInputError
from adfq_sim.pipeline import run_experiment
from conftest import write_config
from reports import summary
from reports.document import Bullets, Image, Paragraph, Table, to_html, to_markdown
from reports.render import load_results

REPO = Path(__file__).resolve().parents[1]
ACCELERATORS = ["edge_npu", "eyeriss_like"]
PLOT_STEMS = ["accuracy_vs_energy_edge_npu", "accuracy_vs_memory", "accuracy_vs_latency_edge_npu", "layer_energy",
              "distributions", "outlier_ratio", "verification"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default run, exactly as the README has users start it (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("default")
    proc = subprocess.run([sys.executable, "-m", "adfq_sim", "run", "--config", str(REPO / "configs" / "edge_npu.yaml"),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out / "edge_npu"


@pytest.fixture(scope="module")
def compared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run priced on two accelerators, with PPOQ's threshold low enough for real outliers."""
    root = tmp_path_factory.mktemp("compared")
    cfg = load_config(write_config(root / "small.yaml", {
        "data": {"calib_images": 32, "eval_images": 64}, "verify": {"images": 4},
        "quant": {"methods": ["minmax", "adfq"], "bits": ["w8a8", "w4a4"],
                  "adfq": {"asmo_iters": 10, "alpha_qkv": 1.5}},
        "hardware": ACCELERATORS, "out": str(root / "runs")}))
    return run_experiment(cfg)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


class _Resources(HTMLParser):
    """Every URL-bearing attribute and tag of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "srcset", "data", "poster")]


def _check_report(folder: Path, stems: list[str]) -> None:
    """Every plot as a PNG of sensible size and a well-formed SVG, report.md showing each, and report.html
    parsing with every image embedded and no external resource."""
    for stem in stems:
        width, height = _png_size(folder / "plots" / f"{stem}.png")
        assert 400 <= width <= 6000 and 300 <= height <= 12000, (stem, width, height)
        ET.parse(folder / "plots" / f"{stem}.svg")  # well-formed SVG
    expected = sorted(f"{stem}.{suffix}" for stem in stems for suffix in ("png", "svg"))
    assert sorted(p.name for p in (folder / "plots").iterdir()) == expected
    markdown = (folder / "report.md").read_text()
    for stem in stems:
        assert f"(plots/{stem}.png)" in markdown
    text = (folder / "report.html").read_text()
    parser = _Resources()
    parser.feed(text)
    parser.close()
    assert parser.tags.count("img") == len(stems)
    assert parser.urls and all(url.startswith("data:image/png;base64,") for url in parser.urls), parser.urls
    assert "link" not in parser.tags and "script" not in parser.tags and "@import" not in text and "url(" not in text


def test_default_run_writes_every_plot_and_both_reports(default_run: Path) -> None:
    _check_report(default_run, PLOT_STEMS)
    assert sorted(p.name for p in default_run.iterdir()) == [
        "plots", "programs", "report.html", "report.md", "results.csv", "results.json", "run.log"]
    markdown = (default_run / "report.md").read_text()
    results = load_results(default_run)
    for row in summary.result_rows(results, "edge_npu"):  # FP32 and every (method, bits), integer numbers too
        assert f"| {row['label']} | {row['fake_quant']:.2f} | " in markdown
    best = summary.recommended(results, "edge_npu")
    assert f"Recommended on edge_npu: **{summary.label(best)}**" in markdown
    assert "Integer-only verification: **0** mismatched codes" in markdown
    assert "Hardware comparison" not in markdown  # one accelerator


def test_compared_run_has_a_plot_and_a_row_per_accelerator(compared_run: Path) -> None:
    _check_report(compared_run, PLOT_STEMS[:1] + ["accuracy_vs_energy_eyeriss_like"] + PLOT_STEMS[1:3]
                  + ["accuracy_vs_area"] + PLOT_STEMS[3:])
    markdown = (compared_run / "report.md").read_text()
    table = markdown.split("## Hardware comparison")[1].split("## Plots")[0]
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "---" not in line] == [
        "| accelerator", "| edge_npu", "| eyeriss_like"]
    assert "| area (mm²) |" in table


def test_costs_carry_the_accelerators_area(compared_run: Path) -> None:
    from hw_models.area import area_mm2
    from hw_models.spec import load_spec

    results = load_results(compared_run)
    for entry in results["results"]:
        for name in ACCELERATORS:
            cost = summary.cost_of(entry, name)
            if cost is None:
                continue
            expected = {c: float(a) for c, a in area_mm2(load_spec(name)).items()}
            assert cost["area_mm2_by_component"] == pytest.approx(expected, rel=1e-12)
            assert cost["area_mm2"] == pytest.approx(sum(expected.values()), rel=1e-12)


def test_results_carry_what_the_plots_need(compared_run: Path) -> None:
    results = load_results(compared_run)
    assert [spec["name"] for spec in results["hardware"]] == ACCELERATORS
    histograms = results["distributions"]
    for key in ("post_layernorm", "post_gelu"):
        hist = histograms[key]
        assert sum(hist["counts"]) == hist["values"] > 0  # every value in a bin
        assert hist["edges"][0] == hist["min"] and hist["edges"][-1] == hist["max"]
    # After the first bin, log-spaced in the distance from the minimum, where post-GELU values crowd.
    widths = np.diff(histograms["post_gelu"]["edges"])[1:-1]
    assert np.allclose(widths[1:] / widths[:-1], widths[1] / widths[0], rtol=1e-6) and widths[1] > widths[0]
    adfq = next(e for e in results["results"] if (e["method"], e["bits"]) == ("adfq", "w4a4"))
    assert adfq["quantizers"]["post_layernorm"]["format"] == "ppoq"
    assert adfq["quantizers"]["post_gelu"]["format"] == "log"
    for entry in results["results"]:
        assert set(entry["cost"]) == set(ACCELERATORS)
        verify = entry["integer_evaluation"]["verify"]
        assert sum(layer["mismatches"] for layer in verify["layers"]) == verify["mismatches"] == 0
        for name in ACCELERATORS:
            cost = entry["cost"][name]
            rows = summary.layer_energy_rows(cost)
            total_pj = sum(sum(parts.values()) for _, parts in rows)
            assert abs(total_pj * 1e-6 - cost["energy_per_inference_uj"]) <= 1e-9 * total_pj
            assert len(rows) == len({name for name, _ in rows})  # every row once


def test_report_command_rerenders_identically(default_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(default_run, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    shutil.rmtree(copy / "plots")
    (copy / "report.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "adfq_sim", "report", str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(copy / "report.md"), str(copy / "report.html")]
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)
    changed = [str(name) for name in before if before[name] != after[name]]
    assert changed == [], changed


def _one_line_error(argv: list[str], *fragments: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "adfq_sim", *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), proc.stderr


def test_report_command_refuses_bad_run_folders(tmp_path: Path) -> None:
    _one_line_error(["report", str(tmp_path / "missing")], "missing", "no such run folder")
    _one_line_error(["report", str(tmp_path)], "results.json")
    (tmp_path / "results.json").write_text("{not json")
    _one_line_error(["report", str(tmp_path)], "results.json", "not valid JSON")
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 1}))
    _one_line_error(["report", str(tmp_path)], "results.json", "schema version 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing half-written


def test_hardware_lists_and_report_section_are_validated(tmp_path: Path) -> None:
    cases = [({"hardware": []}, "hardware: the list is empty"),
             ({"hardware": ["edge_npu", "edge_npv"]}, "hardware[1]: hardware: unknown accelerator preset"),
             ({"hardware": ["edge_npu", "edge_npu"]}, "hardware[1]: accelerator name 'edge_npu' repeats"),
             ({"report": {"focus": "adfk w4a4"}}, "report.focus (method): unknown value 'adfk' (did you mean 'adfq'?)"),
             ({"report": {"focus": "adfq w2a2"}}, "report.focus (bits): unknown value 'w2a2'"),
             ({"report": {"focus": "adfq"}}, "report.focus: expected 'METHOD BITS'"),
             ({"report": {"max_drop": -1}}, "report.max_drop: must be >= 0"),
             ({"report": {"max_dorp": 1}}, "report.max_dorp: unknown key (did you mean 'max_drop'?)")]
    for i, (data, message) in enumerate(cases):
        with pytest.raises(UserInputError, match=re.escape(message)):
            load_config(write_config(tmp_path / f"c{i}.yaml", data))


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=12))
def test_pareto_front_is_exactly_the_undominated_points(points: list[tuple[int, int]]) -> None:
    front = summary.pareto_front(points)

    def dominates(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and a != b

    for i, p in enumerate(points):
        assert (i in front) == (not any(dominates(q, p) for q in points))
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def _entry(method: str, bits: str, top1: float, energy: float) -> dict:
    return {"method": method, "bits": bits, "top1": top1, "integer_evaluation": {"exported": True, "top1": top1},
            "cost": {"npu": {"energy_per_inference_uj": energy}}}


def test_recommended_is_the_cheapest_within_the_allowed_drop() -> None:
    entries = [_entry("a", "w8a8", 80.0, 3.0), _entry("b", "w6a6", 79.5, 2.0), _entry("c", "w4a4", 70.0, 1.0)]
    results = {"fp32": {"top1": 80.2}, "config": {"report": {"max_drop": 1.0, "focus": None}},
               "hardware": [{"name": "npu"}], "results": entries}
    assert summary.recommended(results, "npu")["method"] == "b"
    results["config"]["report"]["max_drop"] = 0.5
    assert summary.recommended(results, "npu")["method"] == "a"
    results["config"]["report"]["max_drop"] = 20.0
    assert summary.recommended(results, "npu")["method"] == "c"
    results["fp32"]["top1"], results["config"]["report"]["max_drop"] = 99.0, 0.0
    assert summary.recommended(results, "npu")["method"] == "a"  # none qualifies: the most accurate
    results["config"]["report"]["focus"] = "c w4a4"
    assert summary.focus(results)["method"] == "c"


def test_documents_escape_text_and_embed_images(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nrest")
    blocks = [Paragraph("x < y and `a|b` **bold**"), Bullets(["<script>alert(1)</script>"]),
              Table(["h|1", "h2"], [["a|b", "1"]], "lr"), Image("a.png", "Caption", "Caption. More.")]
    markdown = to_markdown(blocks)
    assert "| a\\|b | 1 |" in markdown and "| --- | ---: |" in markdown and "![Caption](a.png)" in markdown
    page = to_html(blocks, "t", tmp_path)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<code>a|b</code>" in page and "<strong>bold</strong>" in page and "x &lt; y" in page
    assert 'src="data:image/png;base64,iVBORw0KGgpyZXN0"' in page


def test_cost_and_verify_of_a_run_reuse_its_programs(compared_run: Path, tmp_path: Path) -> None:
    """`cost RUN_DIR --hardware` prices the run's saved programs (nothing calibrated), one file per
    accelerator, so a second preset keeps the first's output; on the run's own accelerators it gives
    the run's costs exactly. `verify RUN_DIR` verifies the saved programs."""
    run = tmp_path / "run"
    shutil.copytree(compared_run, run)
    results = load_results(run)
    exported = [e for e in results["results"] if e["integer_evaluation"]["exported"]]
    assert sorted(p.name for p in (run / "programs").iterdir()) == sorted(
        f"{e['method']}_{e['bits']}.{ext}" for e in exported for ext in ("npz", "txt"))
    for preset in ("edge_tpu_like", "eyeriss_like"):
        proc = subprocess.run([sys.executable, "-m", "adfq_sim", "cost", str(run), "--hardware", preset],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "calibrat" not in proc.stderr.lower() and "ASMO" not in proc.stderr
    costs = {name: json.loads((run / f"cost-{name}.json").read_text()) for name in ("edge_tpu_like", "eyeriss_like")}
    assert costs["edge_tpu_like"]["hardware"]["name"] == "edge_tpu_like"
    for entry, priced in zip(results["results"], costs["eyeriss_like"]["results"]):
        assert (priced["method"], priced["bits"]) == (entry["method"], entry["bits"])
        assert {k: v for k, v in priced.items() if k not in ("method", "bits", "exported")} == \
            entry["cost"]["eyeriss_like"]
    proc = subprocess.run([sys.executable, "-m", "adfq_sim", "verify", str(run)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    verified = json.loads((run / "verify.json").read_text())
    assert verified["total_mismatches"] == 0
    assert [(e["method"], e["bits"], e["images"]) for e in verified["results"]] == [
        (e["method"], e["bits"], 4) for e in results["results"]]
