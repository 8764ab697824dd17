"""The report's figures, drawn from results.json alone: accuracy against cost, the energy of each layer,
the activation distributions under the quantizers' levels, PPOQ's outlier ratios and the integer
program's verification.

Pure functions of the results dict returning `matplotlib.figure.Figure` objects on the Agg canvas (no
pyplot state, so they are safe in tests and worker threads); every selection (metric, Pareto front,
recommended entry, layer rows) comes from `reports.summary`, so tables and plots never disagree.
`save_figure` writes PNG and SVG byte-identically from run to run, so a re-rendered report diffs clean.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from adfq_sim import formats
from adfq_sim.quant.options import METHOD_NAMES
from hw_models.cost import COMPONENTS
from reports import summary

# One colour per method (tab10), shared by every figure and every run: the known methods in
# METHOD_NAMES's order, other names after them in order of appearance.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
# Every entry's marker has this size; the k-th of several entries at the same point one RING_STEP
# larger per k, so coinciding points show as concentric rings.
MARKER_SIZE, RING_STEP = 8.0, 4.0
# One marker per bit-width, in config order.
BIT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
# One hatch per bit-width where bars stand for entries (same method colour, bits told apart).
BIT_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
COMPONENT_LABELS = {"dense_macs": "dense MACs", "shift_adds": "shift-adds", "outliers": "outlier path",
                    "vector": "vector unit", "registers": "PE registers", "sram": "SRAM", "dram": "DRAM"}
COMPONENT_COLOURS = {"dense_macs": "#4c72b0", "shift_adds": "#55a868", "outliers": "#c44e52",
                     "vector": "#8172b2", "registers": "#937860", "sram": "#ccb974", "dram": "#64b5cd"}
QUANTITIES = {"energy": "energy per inference (µJ)", "memory": "model memory footprint (KiB)",
              "latency": "latency per inference (ms)"}
LOG_X_SPAN = 20.0  # a cost axis turns logarithmic only when its largest value exceeds this x its smallest
GRID_COLOUR = "#7f7f7f"  # the uniform min/max comparison grid
MATCH_COLOUR, MISMATCH_COLOUR, ABSENT_COLOUR = "#d9f0d3", "#d7301f", "#f0f0f0"
SMALL = 8  # the smallest font any figure uses (points), still readable in print
SVG_HASH_SALT = "adfq-sim"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _method_colours(results: dict) -> dict[str, str]:
    """Method -> colour, fixed per method name whatever the config's order, so a method has the same
    colour in every figure of every run; listed in config order."""
    methods = list(results["config"]["quant"]["methods"])
    methods += [e["method"] for e in results["results"] if e["method"] not in methods]
    others = [m for m in dict.fromkeys(methods) if m not in METHOD_NAMES]
    slot = {m: i for i, m in enumerate((*METHOD_NAMES, *others))}
    return {m: PALETTE[slot[m] % len(PALETTE)] for m in dict.fromkeys(methods)}


def _bits_order(results: dict) -> list[str]:
    bits = list(results["config"]["quant"]["bits"])
    return list(dict.fromkeys(bits + [e["bits"] for e in results["results"]]))


def _centred_text(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": GRID_COLOUR})


def _cost_value(cost: dict, quantity: str) -> float:
    if quantity == "energy":
        return cost["energy_per_inference_uj"]
    if quantity == "memory":
        return summary.memory_bytes(cost) / 1024
    return cost["latency_ms"]


def _draw_entries(ax, entries: list[dict], points: list[tuple[float, float]], colours: dict[str, str],
                  bits_order: list[str]) -> None:
    """One hollow marker per entry, all of one size: colour the method, shape the bit-width; where several
    entries share a point (to 6 significant digits), each one after the first is a ring larger."""
    seen: dict[tuple[str, str], int] = {}
    for entry, (x, y) in zip(entries, points):
        place = (f"{x:.6g}", f"{y:.6g}")
        ring = seen.get(place, 0)
        seen[place] = ring + 1
        ax.plot([x], [y], linestyle="none", marker=BIT_MARKERS[bits_order.index(entry["bits"]) % len(BIT_MARKERS)],
                markersize=MARKER_SIZE + RING_STEP * ring, markerfacecolor="none", markeredgewidth=1.6,
                markeredgecolor=colours[entry["method"]], zorder=3)


def _draw_front_and_fp32(ax, results: dict, points: list[tuple[float, float]]) -> list[Line2D]:
    """The Pareto front of `points` as a step line (dots on its points, so a one-point front still shows) and
    FP32's accuracy as a dashed line; returns their legend handles."""
    front = summary.pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], drawstyle="steps-post", color="black",
            linewidth=1.2, marker=".", markersize=5, zorder=2)
    fp32 = summary.fp32_accuracy(results)
    ax.axhline(fp32, color="black", linestyle="--", linewidth=1.0, zorder=1)
    return [Line2D([], [], color="black", linewidth=1.2, marker=".", markersize=5,
                   label=f"Pareto front ({len(front)} of {len(points)})"),
            Line2D([], [], color="black", linestyle="--", linewidth=1.0, label=f"FP32 ({fp32:.2f}%)")]


def _legend_handles(entries: list[dict], colours: dict[str, str], bits_order: list[str]) -> list[Line2D]:
    present, present_bits = {e["method"] for e in entries}, {e["bits"] for e in entries}
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=8, markerfacecolor="none",
                      markeredgewidth=1.6, markeredgecolor=c, label=m) for m, c in colours.items() if m in present]
    return handles + [Line2D([], [], linestyle="none", marker=BIT_MARKERS[i % len(BIT_MARKERS)], markersize=8,
                             markerfacecolor="none", markeredgecolor="black", label=b.upper())
                      for i, b in enumerate(bits_order) if b in present_bits]


def accuracy_vs_area(results: dict) -> Figure:
    """Deployed accuracy of each (method, bits) against the silicon area of each accelerator that prices it.

    Accuracy is the program's, area the accelerator's (the same for every configuration it runs), so each
    accelerator is a column of markers, labelled with its name; the step line is the Pareto front over
    all of them (no other accelerator and configuration is both smaller and more accurate).
    """
    metric, ylabel = summary.accuracy_metric(results)
    colours, bits_order = _method_colours(results), _bits_order(results)
    fig = _figure(9.0, 5.2)
    ax = fig.add_subplot()
    ax.set_xlabel("accelerator area (mm², at its node)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel.split(' (')[0]} vs accelerator area")
    entries, points, columns = [], [], {}
    for name in summary.accelerators(results):
        for entry in summary.costed(results, name):
            area = summary.cost_of(entry, name)["area_mm2"]
            entries.append(entry)
            points.append((area, summary.deployed_accuracy(entry, metric)))
            columns[name] = area
    if not entries:
        _centred_text(ax, "no entry has a cost on any accelerator\n(none was exported to an integer program)")
        return fig
    _draw_entries(ax, entries, points, colours, bits_order)
    reference = _draw_front_and_fp32(ax, results, points)
    for name, area in columns.items():
        ax.annotate(name, (area, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -4), textcoords="offset points",
                    rotation=90, ha="center", va="top", fontsize=SMALL, color=GRID_COLOUR)
    areas = list(columns.values())
    if max(areas) / min(areas) > LOG_X_SPAN:
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.12)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.3 * (high - low))  # room for the names at the top
    ax.grid(True, color="#e0e0e0", linewidth=0.6, zorder=0)
    fig.legend(handles=_legend_handles(entries, colours, bits_order) + reference, loc="outside right upper",
               fontsize=9, frameon=False)
    return fig


def accuracy_vs_cost(results: dict, accelerator: str, quantity: str) -> Figure:
    """Deployed accuracy of each (method, bits) against its cost on one accelerator, with the Pareto front.

    Entries often coincide (methods that share a format cost the same and may score the same): every
    marker is hollow and of one size, and each further entry at the same point a larger ring.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {sorted(QUANTITIES)}")
    metric, ylabel = summary.accuracy_metric(results)
    colours, bits_order = _method_colours(results), _bits_order(results)
    fig = _figure(9.0, 5.2)
    ax = fig.add_subplot()
    ax.set_xlabel(QUANTITIES[quantity])
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel.split(' (')[0]} vs {quantity.replace('memory', 'memory footprint')} on {accelerator}")
    entries = summary.costed(results, accelerator)
    if not entries:
        _centred_text(ax, f"no entry has a cost on {accelerator}\n(none was exported to an integer program)")
        return fig
    points = [(_cost_value(summary.cost_of(e, accelerator), quantity), summary.deployed_accuracy(e, metric))
              for e in entries]
    _draw_entries(ax, entries, points, colours, bits_order)
    reference = _draw_front_and_fp32(ax, results, points)
    chosen = summary.recommended(results, accelerator)
    max_drop = results["config"]["report"]["max_drop"]
    points_word = "point" if max_drop == 1 else "points"
    if summary.within_drop(results, chosen):
        meaning = f"recommended: lowest energy within\n{max_drop:g} {points_word} of FP32"
    else:
        meaning = f"recommended: most accurate\n(none within {max_drop:g} {points_word} of FP32)"
    ring = points[entries.index(chosen)]
    ax.plot([ring[0]], [ring[1]], linestyle="none", marker="o", markersize=26, markerfacecolor="none",
            markeredgecolor="black", markeredgewidth=2.0, zorder=4)
    xs = [x for x, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) > LOG_X_SPAN:
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.12)
    ax.grid(True, color="#e0e0e0", linewidth=0.6, zorder=0)
    handles = _legend_handles(entries, colours, bits_order) + reference
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=13, markerfacecolor="none",
                          markeredgecolor="black", markeredgewidth=2.0, label=meaning))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    return fig


def layer_energy(results: dict, entry: dict, accelerator: str) -> Figure:
    """One stacked bar per layer row (GEMMs, then each block's vector ops), split by hardware component.

    Height grows with the number of rows so no two layer names overlap; all six components stay in the
    legend even when zero, so figures of different entries read alike.
    """
    cost = summary.cost_of(entry, accelerator)
    if cost is None:
        fig = _figure(8.0, 3.0)
        _centred_text(fig.add_subplot(), f"{summary.label(entry)} has no cost on {accelerator} (not exported)")
        return fig
    rows = summary.layer_energy_rows(cost)
    fig = _figure(9.0, 2.4 + 0.2 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for component in COMPONENTS:
        widths = np.array([energy.get(component, 0.0) for _, energy in rows]) / 1000.0
        ax.barh(y, widths, left=left, height=0.75, color=COMPONENT_COLOURS[component],
                label=COMPONENT_LABELS[component])
        left += widths
    ax.set_yticks(y, [name for name, _ in rows], fontsize=SMALL)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # execution order, top to bottom
    ax.set_xlabel("energy per inference (nJ)")
    ax.set_ylabel("layer (execution order)")
    ax.grid(True, axis="x", color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlim(0.0, max(float(left.max()), 1e-9) * 1.03)
    ax.set_title(f"{summary.label(entry)} on {accelerator}: {cost['energy_per_inference_uj']:.4g} µJ per inference",
                 fontsize=11)
    handles = [Patch(color=COMPONENT_COLOURS[c], label=COMPONENT_LABELS[c]) for c in COMPONENTS]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(COMPONENTS), fontsize=9, frameon=False)
    return fig


def _uniform_grid(hist: dict, bits: int) -> np.ndarray:
    """The 2**bits evenly spaced levels of a min/max quantizer over the histogram's range (with 0)."""
    return np.linspace(min(hist["min"], 0.0), max(hist["max"], 0.0), 2 ** bits)


def _beyond(hist: dict, alpha: float) -> float:
    """Values with |x| > alpha, estimated from the histogram (uniform density inside each bin)."""
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], dtype=np.float64)
    width = np.diff(edges)
    above = np.clip(edges[1:] - np.maximum(edges[:-1], alpha), 0.0, None)
    below = np.clip(np.minimum(edges[1:], -alpha) - edges[:-1], 0.0, None)
    return float((counts * (above + below) / np.where(width > 0, width, 1.0)).sum())


def _draw_histogram(ax, hist: dict, shift: float = 0.0) -> None:
    edges = np.asarray(hist["edges"]) - shift
    counts = np.asarray(hist["counts"])
    ax.stairs(counts, edges, fill=True, color="#c6dbef", edgecolor="#3182bd", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(float(counts.max()), 1.0) * 20.0)  # a free band on top for the notes
    ax.set_ylabel("count (log scale)")
    ax.grid(True, axis="y", color="#e8e8e8", linewidth=0.6)


def _draw_level_rows(ax, rows: list[tuple[str, np.ndarray, str]]) -> None:
    """Each level set as a row of ticks (a rug), labelled on the y axis."""
    for i, (_, levels, colour) in enumerate(rows):
        ax.vlines(levels, i - 0.38, i + 0.38, color=colour, linewidth=0.9)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=SMALL)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)


def _steps(form: dict | None) -> np.ndarray | None:
    """The step of each row of a uniform / PPOQ form (one for per-tensor); None for other formats."""
    if form is None or form["format"] not in ("uniform", "ppoq"):
        return None
    return np.atleast_1d(np.asarray(form["scale"], dtype=np.float64))


def _row_unit(form: dict) -> str:
    return "channel" if form.get("granularity") == "channel" else "token"


def _layernorm_panel(ax, levels_ax, hist: dict, form: dict | None, bits: int, name: str, colour: str) -> None:
    """(a): the post-LayerNorm histogram, the entry's levels (finest and coarsest row) and PPOQ's ±alpha."""
    _draw_histogram(ax, hist)
    ax.set_title(f"(a) post-LayerNorm: {hist['tensor']} ({hist['values']:,} values)", fontsize=10, loc="left")
    rows = [(f"uniform min/max\n{2 ** bits} levels", _uniform_grid(hist, bits), GRID_COLOUR)]
    span = [min(hist["min"], 0.0), max(hist["max"], 0.0)]
    if form is not None:
        levels, steps = formats.levels(form), _steps(form)
        if levels.shape[0] > 1:
            fine, coarse, unit = int(steps.argmin()), int(steps.argmax()), _row_unit(form)
            rows += [(f"{name}\nfinest {unit} ({fine})", levels[fine], colour),
                     (f"{name}\ncoarsest {unit} ({coarse})", levels[coarse], colour)]
        else:
            rows.append((f"{name}\n{levels.shape[1]} levels", levels[0], colour))
        span = [min(span[0], float(levels.min())), max(span[1], float(levels.max()))]
    if form is not None and form["format"] == "ppoq":
        alpha, peak = float(form["alpha"]), max(abs(hist["min"]), abs(hist["max"]))
        if alpha <= 2.0 * peak:  # close enough to draw without squashing the histogram
            span = [min(span[0], -alpha), max(span[1], alpha)]
        if peak <= alpha:
            note = "no value beyond it"
        else:
            count = max(1, round(_beyond(hist, alpha)))
            note = f"≈{count:,} values ({100.0 * count / hist['values']:.3g}%) beyond it"
        for target in (ax, levels_ax):
            for side in (-alpha, alpha):
                target.axvline(side, color=MISMATCH_COLOUR, linestyle="--", linewidth=1.0)
        ax.text(0.5, 0.97, f"PPOQ outlier threshold ±alpha = ±{alpha:g} (dashed): {note}", transform=ax.transAxes,
                ha="center", va="top", fontsize=SMALL, zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 2.0})
    pad = 0.03 * (span[1] - span[0])
    ax.set_xlim(span[0] - pad, span[1] + pad)
    ax.tick_params(labelbottom=False)
    _draw_level_rows(levels_ax, rows)
    levels_ax.set_xlabel("activation value")


def _step_panel(ax, hist: dict, form: dict | None, bits: int, name: str, colour: str) -> None:
    """(b): the post-LayerNorm step per token (or the one step) against the uniform grid's step."""
    grid_step = (max(hist["max"], 0.0) - min(hist["min"], 0.0)) / (2 ** bits - 1)
    ax.axhline(grid_step, color=GRID_COLOUR, linestyle="--", linewidth=1.2,
               label=f"uniform min/max step ({grid_step:.3g})")
    steps = _steps(form)
    unit = _row_unit(form) if form is not None else "token"
    ax.set_xlabel(f"{unit} index")
    if steps is None:
        if form is not None:
            _centred_text(ax, f"{form['format']} levels have no single step")
        steps = np.array([grid_step])
    elif len(steps) > 1:
        ax.plot(np.arange(len(steps)), steps, marker="o", markersize=3.5, color=colour, linewidth=1.0,
                label=f"{name} step per {unit}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.axhline(float(steps[0]), color=colour, linewidth=1.5, label=f"{name} step (per tensor)")
        ax.set_xlabel(f"{unit} index (one step for every {unit})")
        ax.set_xticks([])
    ax.set_ylabel("step (activation units)")
    ax.set_ylim(0.0, 1.3 * max(grid_step, float(steps.max())))  # room above for the legend
    ax.set_title("(b) post-LayerNorm quantization step", fontsize=10, loc="left")
    ax.grid(True, color="#e8e8e8", linewidth=0.6)
    ax.legend(loc="upper right", fontsize=SMALL, ncols=2)


def _gelu_panel(ax, levels_ax, hist: dict, form: dict | None, bits: int, name: str, colour: str) -> None:
    """(c): the post-GELU histogram and levels on a symlog axis measured from the GELU minimum (SLQ's
    shift), where log levels crowd; measured from the observed minimum for other formats."""
    slq = form is not None and form["format"] == "log"
    shift = float(form["shift"]) if slq else min(hist["min"], 0.0)
    _draw_histogram(ax, hist, shift)
    ax.set_title(f"(c) post-GELU: {hist['tensor']} ({hist['values']:,} values)", fontsize=10, loc="left")
    rows = [(f"uniform min/max\n{2 ** bits} levels", _uniform_grid(hist, bits) - shift, GRID_COLOUR)]
    if form is not None:
        kind = "SLQ log" if slq else form["format"].replace("_", "-")
        rows.append((f"{name}\n{kind} levels", formats.levels(form)[0] - shift, colour))
    # Linear up to the smallest non-zero level (at most three decades below the top), log above.
    magnitudes = np.abs(np.concatenate([levels for _, levels, _ in rows]))
    top = max(float(magnitudes.max()), hist["max"] - shift)
    linthresh = max(float(magnitudes[magnitudes > 1e-6 * top].min(initial=top)), 1e-3 * top)
    ax.set_xscale("symlog", linthresh=linthresh, linscale=1.0)
    # Major ticks at 0 and the whole decades outside the linear band (the default also ticks decades
    # inside it, whose labels then collide with 0's).
    low = min(float(np.min(np.concatenate([levels for _, levels, _ in rows]))), hist["min"] - shift)
    decades = [10.0 ** k for k in range(int(np.ceil(np.log10(linthresh))), int(np.floor(np.log10(top))) + 1)]
    ax.set_xticks([-d for d in decades[::-1] if -d >= low] + [0.0] + decades)
    ax.tick_params(labelbottom=False)
    _draw_level_rows(levels_ax, rows)
    origin = "the GELU minimum" if slq else "the observed minimum"
    levels_ax.set_xlabel(f"activation value − ({shift:.4f}), i.e. distance from {origin} "
                         f"(symlog, linear below {linthresh:.2g})")


def distributions(results: dict, entry: dict) -> Figure:
    """The FP32 post-LayerNorm and post-GELU distributions under the entry's levels and a plain uniform grid.

    Shows why ADFQ's formats fit: PPOQ's step per token against one global step (and whether anything
    reached the outlier path), and SLQ's log levels, dense next to the GELU minimum where most post-GELU
    values lie, against evenly spaced levels.
    """
    dist = results.get("distributions")
    if not dist:
        fig = _figure(8.0, 3.0)
        _centred_text(fig.add_subplot(), "no activation distributions recorded in this run")
        return fig
    ln_hist, gelu_hist = dist["post_layernorm"], dist["post_gelu"]
    forms, bits = entry["quantizers"] or {}, entry["a_bits"]
    style = (summary.label(entry), _method_colours(results)[entry["method"]])
    fig = _figure(9.0, 12.0)
    axes = fig.subplot_mosaic([["a"], ["a_levels"], ["b"], ["c"], ["c_levels"]],
                              height_ratios=[3.0, 1.1, 2.4, 3.0, 0.8])
    axes["a_levels"].sharex(axes["a"])
    axes["c_levels"].sharex(axes["c"])
    fig.suptitle(f"{ln_hist['tensor']} and {gelu_hist['tensor']} (FP32, {dist['images']} images) "
                 f"under {style[0]} levels", fontsize=11)
    _layernorm_panel(axes["a"], axes["a_levels"], ln_hist, forms.get("post_layernorm"), bits, *style)
    _step_panel(axes["b"], ln_hist, forms.get("post_layernorm"), bits, *style)
    _gelu_panel(axes["c"], axes["c_levels"], gelu_hist, forms.get("post_gelu"), bits, *style)
    return fig


def _short_quantizer(name: str) -> str:
    """'blocks.0.attn.qkv.act_q' -> 'blocks.0 qkv' (the block and the layer the quantizer feeds)."""
    stem = name.removesuffix(".act_q")
    match = re.match(r"^((?:layers\.\d+\.)?blocks\.\d+)\.(.+)$", stem)
    return f"{match.group(1)} {match.group(2).split('.')[-1]}" if match else stem


def outlier_ratios(results: dict) -> Figure:
    """Share of values PPOQ sent to its sparse outlier path at evaluation, per quantizer and entry.

    All-zero ratios are a finding (the thresholds are above every value), so the figure says so rather
    than showing empty axes.
    """
    entries = [e for e in results["results"] if e.get("outlier_ratio")]
    quantizers = list(dict.fromkeys(q for e in entries for q in e["outlier_ratio"]))
    width = min(30.0, max(7.0, 2.5 + 0.18 * len(quantizers) * max(1, len(entries))))
    fig = _figure(width, 4.8)
    ax = fig.add_subplot()
    ax.set_ylabel("values beyond alpha at evaluation (%)")
    ax.set_xlabel("outlier-aware quantizer (block and the layer it feeds)")
    ax.set_title("PPOQ outlier ratio per quantizer")
    if not entries:
        _centred_text(ax, "no entry has outlier-aware quantizers (PPOQ), so there is no outlier path")
        return fig
    colours, bits_order = _method_colours(results), _bits_order(results)
    bar = 0.8 / len(entries)
    x = np.arange(len(quantizers))
    ratios = []
    for i, entry in enumerate(entries):
        heights = [100.0 * r["eval"] if (r := entry["outlier_ratio"].get(q)) and r["eval"] is not None else np.nan
                   for q in quantizers]
        ratios += [h for h in heights if not np.isnan(h)]
        ax.bar(x - 0.4 + bar * (i + 0.5), np.nan_to_num(heights), width=bar, color=colours[entry["method"]],
               hatch=BIT_HATCHES[bits_order.index(entry["bits"]) % len(BIT_HATCHES)], edgecolor="white",
               linewidth=0.5, label=summary.label(entry))
    labels = [_short_quantizer(q) for q in quantizers]
    crowded = max(len(t) for t in labels) * 0.075 > (width - 2.5) / len(quantizers)  # ~0.075 in per 8 pt char
    ax.set_xticks(x, labels, fontsize=SMALL, rotation=90 if crowded else 0)
    ax.set_xlim(-0.6, len(quantizers) - 0.4)
    ax.grid(True, axis="y", color="#e8e8e8", linewidth=0.6)
    ax.set_axisbelow(True)
    if not ratios:
        ax.set_ylim(0.0, 1.0)
        _centred_text(ax, "no outlier ratio was measured at evaluation")
    elif not any(ratios):
        adfq = results["config"]["quant"]["adfq"]
        ax.set_ylim(0.0, 1.0)
        _centred_text(ax, "No value exceeded the thresholds:\n"
                          f"|x| > alpha_qkv = {adfq['alpha_qkv']:g} before qkv, "
                          f"|x| > alpha_fc1 = {adfq['alpha_fc1']:g} before fc1.\n"
                          "Every outlier ratio is 0: the sparse outlier path carried nothing.")
    fig.legend(loc="outside right upper", fontsize=9, frameon=False, handleheight=1.6, handlelength=2.5)
    return fig


def _tensor_key(layer: dict) -> str:
    return f"{layer['op']}.{layer['tensor']}" if layer["op"] else layer["tensor"]


def _merged_columns(orders: list[list[str]]) -> list[str]:
    """Every tensor once, each inserted after its predecessor in the first program that has it, so the
    columns keep execution order even where programs differ (PPOQ's outlier tensors)."""
    merged: list[str] = []
    for order in orders:
        for i, key in enumerate(order):
            if key not in merged:
                merged.insert(merged.index(order[i - 1]) + 1 if i else 0, key)
    return merged


def verification(results: dict) -> Figure:
    """Mismatched integer codes (simulator vs fake-quant) per exported entry and verified tensor.

    Zero cells stay calm and any mismatch stands out with its count, so a clean run reads at a glance and a
    broken kernel points at its tensor.
    """
    entries = [e for e in results["results"] if e["integer_evaluation"].get("exported")]
    names = _merged_columns([[_tensor_key(layer) for layer in e["integer_evaluation"]["verify"]["layers"]]
                             for e in entries])
    if not entries or not names:
        fig = _figure(8.0, 3.0)
        _centred_text(fig.add_subplot(), "no entry was exported to an integer program, so nothing was verified")
        return fig
    counts = np.full((len(entries), len(names)), np.nan)
    for r, entry in enumerate(entries):
        for layer in entry["integer_evaluation"]["verify"]["layers"]:
            counts[r, names.index(_tensor_key(layer))] = layer["mismatches"]
    image = np.empty(counts.shape + (3,))
    image[np.isnan(counts)] = to_rgb(ABSENT_COLOUR)
    image[counts == 0] = to_rgb(MATCH_COLOUR)
    image[counts > 0] = to_rgb(MISMATCH_COLOUR)
    longest = max(len(n) for n in names)
    fig = _figure(max(8.0, 3.0 + 0.2 * len(names)), 2.4 + 0.09 * longest + 0.3 * len(entries))
    ax = fig.add_subplot()
    ax.imshow(image, aspect="auto", interpolation="nearest")
    for r, c in zip(*np.nonzero(counts > 0)):
        text = f"{int(counts[r, c]):,}"
        ax.text(c, r, text, ha="center", va="center", color="white", fontsize=SMALL, fontweight="bold",
                rotation=90 if len(text) > 2 else 0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=SMALL)
    ax.set_yticks(range(len(entries)), [summary.label(e) for e in entries], fontsize=9)
    ax.set_xticks(np.arange(len(names) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(entries) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("verified tensor (op.tensor)")
    ax.set_ylabel("exported entry")
    verifies = [e["integer_evaluation"]["verify"] for e in entries]
    images = sorted({v["images"] for v in verifies})
    image_text = f"{images[0]}" if len(images) == 1 else f"{images[0]}-{images[-1]}"
    per_entry = sorted({v["tensors"] for v in verifies})
    per_text = f"{per_entry[0]}" if len(per_entry) == 1 else f"{per_entry[0]}-{per_entry[-1]}"
    total = int(np.nansum(counts))
    ax.set_title(f"Integer program vs fake-quant: {total:,} mismatched codes over "
                 f"{sum(v['tensors'] for v in verifies):,} tensors ({len(entries)} entries, {per_text} tensors "
                 f"each), {image_text} images", fontsize=10, loc="left")
    handles = [Patch(color=MATCH_COLOUR, label="0 mismatches"),
               Patch(color=MISMATCH_COLOUR, label="mismatched codes (count written)"),
               Patch(color=ABSENT_COLOUR, label="not in this entry's program")]
    fig.legend(handles=handles, loc="outside lower left", ncols=3, fontsize=9, frameon=False)
    return fig


def save_figure(fig: Figure, folder: Path, stem: str) -> list[Path]:
    """Write `stem.png` (150 dpi) and `stem.svg`, byte-identical on every call: no dates, fixed SVG ids.

    The constrained layout is solved once and then frozen (layout engine "none"): re-solved at every save
    it drifts in the last digits with the previous render's state, which changes the SVG's clip-path ids.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    engine = fig.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    png, svg = folder / f"{stem}.png", folder / f"{stem}.svg"
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        fig.savefig(png, format="png", dpi=150, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None})
    return [png, svg]
