"""The content of report.md / report.html: which plots a run gets and what the report says about them.

Everything is read off results.json (through `reports.summary`), so the same results always give the same
report. Each plot carries its "how to read it" caption here, next to where it is chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import yaml
from matplotlib.figure import Figure

from adfq_sim.formats import RESIDUAL_BITS
from reports import plots, summary
from reports.document import Block, Bullets, Code, Heading, Image, Paragraph, Table

PLOTS_FOLDER = "plots"


@dataclass(frozen=True)
class PlotSpec:
    stem: str
    title: str
    make: Callable[[], Figure]
    caption: str

    @property
    def png(self) -> str:
        return f"{PLOTS_FOLDER}/{self.stem}.png"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def plot_specs(results: dict) -> list[PlotSpec]:
    """Every plot of the run that has something to show, in report order: no cost plot where nothing was
    priced, no verification plot where nothing was exported."""
    names = summary.accelerators(results)
    first = names[0]
    exported = any(e["integer_evaluation"].get("exported") for e in results["results"])
    specs = [] if not exported else [PlotSpec(f"accuracy_vs_energy_{_safe(name)}", f"accuracy vs energy on {name}",
                      lambda name=name: plots.accuracy_vs_cost(results, name, "energy"),
                      f"Accuracy vs energy per inference on {name}. One marker per (method, bits): colour is "
                      "the method, shape the bit-width; accuracy is the integer program's, energy the cost "
                      "model's for one image. Up and to the left is better; the step line is the Pareto front "
                      "(no other configuration is both cheaper and more accurate), the dashed line FP32, the "
                      "ring the recommended configuration.") for name in names]
    specs += [] if not exported else [
        PlotSpec("accuracy_vs_memory", "accuracy vs memory footprint",
                 lambda: plots.accuracy_vs_cost(results, first, "memory"),
                 "Accuracy vs model memory footprint: weights with their requantization rules and zero-points, "
                 "the peak live activations and PPOQ's outlier list, in KiB. Bit-width sets the footprint; "
                 "methods at one bit-width differ only in accuracy."),
        PlotSpec(f"accuracy_vs_latency_{_safe(first)}", f"accuracy vs latency on {first}",
                 lambda: plots.accuracy_vs_cost(results, first, "latency"),
                 f"Accuracy vs latency of one inference on {first} (the slower of compute and memory time per "
                 "layer, layers in sequence)."),
    ]
    if exported and len(names) > 1:  # area is the accelerator's: one accelerator would draw a single column
        specs.append(PlotSpec("accuracy_vs_area", "accuracy vs accelerator area",
                              lambda: plots.accuracy_vs_area(results),
                              "Accuracy vs the silicon area of each configured accelerator (mm² at its node: the "
                              "PE array and its register files, shift-add and outlier lanes, vector unit and SRAM; "
                              "the cost model's area model). Area is the accelerator's, not the configuration's, "
                              "so each accelerator is a column of markers; the step line is the Pareto front over "
                              "all of them."))
    entry = summary.focus(results)
    if entry is not None and summary.cost_of(entry, first) is not None:
        specs.append(PlotSpec("layer_energy", "energy per layer", lambda: plots.layer_energy(results, entry, first),
                              f"Energy per layer of {summary.label(entry)} on {first}, by component. Each "
                              "transformer block's vector ops (LayerNorm, softmax, GELU, requantization, residual "
                              "adds) form one bar; the longest bars are where the energy goes."))
    shown = summary.distribution_entry(results)
    if results.get("distributions") and shown is not None:
        panels = ("(a) post-LayerNorm values, PPOQ's levels for its finest- and coarsest-step token and its "
                  "outlier threshold; (b) PPOQ's step per token; (c) post-GELU values with the shift-log2 levels, "
                  "dense next to the GELU minimum where most values lie." if shown["method"] == "adfq" else
                  "(a) post-LayerNorm values and the quantizer's levels; (b) its step; (c) post-GELU values and "
                  "the quantizer's levels.")
        specs.append(PlotSpec("distributions", "activation distributions and quantizer levels",
                              lambda: plots.distributions(results, shown),
                              f"FP32 activations of {results['distributions']['block']} (calibration images) "
                              f"with the levels of {summary.label(shown)}'s quantizers against a uniform min/max "
                              f"grid of the same bit-width: {panels}"))
    specs += [
        PlotSpec("outlier_ratio", "PPOQ outlier ratio per layer", lambda: plots.outlier_ratios(results),
                 "Share of post-LayerNorm values on PPOQ's sparse outlier path, per quantized layer, on the "
                 "evaluation images."),
    ]
    specs += [] if not exported else [
        PlotSpec("verification", "verification: mismatched codes per tensor", lambda: plots.verification(results),
                 "Mismatched codes between the integer simulator and the integer-faithful fake-quant, per "
                 "tensor and configuration, on the verified evaluation images. All zero is the point: the "
                 "integer-only execution computes exactly the codes the quantized model defines."),
    ]
    return specs


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _summary_bullets(results: dict) -> list[str]:
    metric, _ = summary.accuracy_metric(results)
    name = "top-1" if metric == "top1" else "agreement with FP32"
    exported = [e for e in results["results"] if e["integer_evaluation"].get("exported")]
    max_drop = results["config"]["report"]["max_drop"]
    drop_text = f"{max_drop:g} point{'' if max_drop == 1 else 's'}"
    items = []
    if not exported:
        items.append("No configuration was exported to an integer program: nothing was verified on the integer "
                     "simulator or priced on an accelerator; the accuracies below are the fake-quant model's.")
    for row in summary.hardware_rows(results) if exported else []:
        chosen = summary.recommended(results, row["accelerator"])
        caveat = "" if summary.within_drop(results, chosen) else \
            f" No configuration is within {drop_text} of FP32 (`report.max_drop`); this is the most accurate one."
        items.append(f"Recommended on {row['accelerator']}: **{row['recommended']}**, {name} "
                     f"{_num(row['accuracy'])} % (FP32 {_num(summary.fp32_accuracy(results))} %), "
                     f"{_num(row['energy_uj'], 3)} µJ and {_num(row['latency_ms'], 4)} ms per inference, "
                     f"{_num(row['tops_per_w'])} effective TOPS/W.{caveat}")
    if exported:
        items += _why(results, name)
        items.append(f"Recommended = the lowest energy per inference among the configurations whose integer {name} "
                     f"is at most {drop_text} below FP32 (`report.max_drop`); the most accurate one where none is.")
        verifies = [e["integer_evaluation"]["verify"] for e in exported]
        mismatches = sum(v["mismatches"] for v in verifies)
        images = sorted({v["images"] for v in verifies})
        image_text = f"{images[0]}" if len(images) == 1 else f"{images[0]}-{images[-1]}"
        items.append(f"Integer-only verification: **{mismatches}** mismatched codes over "
                     f"{sum(v['tensors'] for v in verifies)} tensors ({len(exported)} exported configurations, "
                     f"{image_text} images each).")
    reasons: dict[str, list[str]] = {}
    for e in results["results"]:
        if not e["integer_evaluation"].get("exported"):
            reasons.setdefault(e["integer_evaluation"].get("reason", "no reason given"), []).append(summary.label(e))
    for reason, labels in reasons.items():
        items.append(f"Not exported to an integer program ({reason}): {', '.join(labels)}; "
                     f"{'they have' if len(labels) > 1 else 'it has'} a fake-quant accuracy but no integer "
                     "accuracy or cost.")
    return items


def _why(results: dict, name: str) -> list[str]:
    """Why the first accelerator's recommendation wins: the other methods at its bit-width, and where its
    energy goes."""
    first = summary.accelerators(results)[0]
    chosen = summary.recommended(results, first)
    if chosen is None:
        return []
    metric, _ = summary.accuracy_metric(results)
    items = []
    rivals = [e for e in summary.costed(results, first) if e["bits"] == chosen["bits"] and e is not chosen]
    if rivals:
        best = max(rivals, key=lambda e: summary.deployed_accuracy(e, metric))
        items.append(f"At {chosen['bits'].upper()} the other methods reach at most "
                     f"{_num(summary.deployed_accuracy(best, metric))} % integer {name} ({best['method']}), against "
                     f"{_num(summary.deployed_accuracy(chosen, metric))} % for {chosen['method']}.")
    energy = summary.cost_of(chosen, first)["energy_uj"]
    total = sum(energy.values())
    shares = sorted(((uj / total, component) for component, uj in energy.items() if total and uj / total >= 0.005),
                    reverse=True)
    items.append(f"Where {summary.label(chosen)}'s energy goes on {first}: "
                 + ", ".join(f"{plots.COMPONENT_LABELS[c]} {100 * share:.0f} %" for share, c in shares) + ".")
    return items


def _results_table(results: dict) -> Table:
    metric, _ = summary.accuracy_metric(results)
    name = "top-1" if metric == "top1" else "agreement"
    first = summary.accelerators(results)[0]
    rows = [[r["label"], _num(r["fake_quant"]), _num(r["integer"]), _num(r["sqnr_db"]),
             _num(None if r["macs"] is None else r["macs"] / 1e6, 3), _num(r["memory_kib"], 1),
             _num(r["energy_uj"], 3), _num(r["latency_ms"], 4)] for r in summary.result_rows(results, first)]
    return Table(["configuration", f"fake-quant {name} (%)", f"integer {name} (%)", "logit SQNR (dB)", "MACs (M)",
                  "memory (KiB)", f"energy (µJ, {first})", f"latency (ms, {first})"], rows, "lrrrrrrr")


def _hardware_table(results: dict) -> Table:
    rows = [[r["accelerator"], r["array"], _num(r["clock_mhz"], 0), _num(r["sram_kib"], 0), _num(r["area_mm2"], 3),
             r["recommended"] or "-", _num(r["accuracy"]), _num(r["energy_uj"], 3), _num(r["latency_ms"], 4),
             _num(r["tops_per_w"])] for r in summary.hardware_rows(results)]
    return Table(["accelerator", "PE array", "clock (MHz)", "SRAM (KiB)", "area (mm²)", "recommended", "accuracy (%)",
                  "energy (µJ)", "latency (ms)", "effective TOPS/W"], rows, "llrrrlrrrr")


def _environment_table(results: dict) -> Table:
    env = results["environment"]
    rows = [["python", env["python"]], ["platform", env["platform"]], ["CPU cores", str(env["cpu_count"])]]
    rows += [[name, version or "-"] for name, version in env["packages"].items()]
    return Table(["", "version"], rows, "ll")


def build(results: dict, specs: list[PlotSpec]) -> list[Block]:
    """The report's blocks; `specs` are the plots rendered beside it."""
    cfg, model, data = results["config"], results["model"], results["data"]
    first = summary.accelerators(results)[0]
    metric, _ = summary.accuracy_metric(results)
    ops = results["quantized_ops"]
    blocks: list[Block] = [
        Heading(f"adfq-sim report: {cfg['name']}", 1),
        Paragraph(f"Model `{model['name']}` ({model['source']}, {model['parameters']:,} parameters, "
                  f"{model['num_classes']} classes); data {data.get('dataset', data['kind'])}: "
                  f"{data['calib_images']} calibration and {data['eval_images']} evaluation images; "
                  f"accelerators: {', '.join(summary.accelerators(results))}. Seed {cfg['seed']}; the run took "
                  f"{results['timings']['total_s']:.1f} s."),
        Heading("Summary"),
        Bullets(_summary_bullets(results)),
        *([Heading("Flags"), Paragraph("What the numbers above do not show at a glance (`flags` in results.json):"),
           Bullets([flag["message"] for flag in results["flags"]])] if results["flags"] else []),
        Heading("Results"),
        _results_table(results),
        Bullets(([] if metric == "top1" else ["The data has no labels: the accuracy columns are arg-max agreement "
                                              "with FP32 (%)."]) + [
            "**fake-quant**: the PyTorch model with quantized GEMM inputs and weights ("
            + ", ".join(ops["quantized"]) + "); float: " + ", ".join(ops["float"]) + ".",
            "**integer**: the exported integer-only program run by the Numba simulator — every op integer "
            f"(integer LayerNorm, softmax and GELU, dyadic requantization, {RESIDUAL_BITS}-bit residual stream, "
            "PPOQ outliers on a sparse int16 path); this is what the cost columns price.",
            "**logit SQNR**: FP32 logits against the fake-quant logits, 10·log10(signal / error power).",
            "**MACs, memory, energy, latency**: one inference on the accelerator named in the column (cost model, "
            "`hw_models`); memory is weights (with rules and zero-points), peak live activations and outliers.",
            "`-`: not applicable, or the configuration was not exported to an integer program.",
        ]),
    ]
    if len(summary.accelerators(results)) > 1 and any(summary.costed(results, a) for a in summary.accelerators(results)):
        blocks += [Heading("Hardware comparison"),
                   Paragraph("Each accelerator's recommended configuration (see Summary) and its cost; the "
                             "accuracy-vs-energy plot of each accelerator follows under Plots."),
                   _hardware_table(results)]
    blocks.append(Heading("Plots"))
    for spec in specs:
        blocks.append(Image(spec.png, spec.title, spec.caption))
    focused = summary.focus(results)
    blocks += [
        Paragraph(f"Per-layer plots describe {summary.label(focused) if focused else '-'} on {first} "
                  "(`report.focus`, default: the recommended configuration). Every plot is also in "
                  f"`{PLOTS_FOLDER}/` as SVG."),
        Heading("Configuration"),
        Paragraph("The resolved configuration of this run (every default filled in):"),
        Code(yaml.safe_dump(cfg, sort_keys=False)),
        Heading("Environment"),
        _environment_table(results),
        Heading("Reproduce"),
        Paragraph("Save the configuration above as `config.yaml` (its `name` and `out` give the run folder) and "
                  "run it; re-render this report from a run folder's results.json without recomputing:"),
        Code(f"pip install -e .\nadfq-sim run --config config.yaml\nadfq-sim report {cfg['out']}/{cfg['name']}"),
    ]
    return blocks
