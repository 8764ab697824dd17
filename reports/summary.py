"""What the report says, read off results.json: the accuracy metric, the Pareto front, the recommended
(method, bits) per accelerator, the focus entry, and the rows of its tables.

Pure functions of the results dict, so `adfq-sim report` re-renders a run folder without recomputing.
The accuracy of a quantized entry is its integer program's (what the accelerator computes); the
fake-quant number stands where the model was not exported (it then has no cost either).
"""

from __future__ import annotations

import re

from adfq_sim.config import parse_focus
from hw_models.cost import COMPONENTS


def accuracy_metric(results: dict) -> tuple[str, str]:
    """("top1", label), or ("agreement", label) where the data has no labels (random tensors)."""
    if results["fp32"]["top1"] is not None:
        return "top1", "top-1 accuracy (%)"
    return "agreement", "arg-max agreement with FP32 (%)"


def fp32_accuracy(results: dict) -> float:
    metric, _ = accuracy_metric(results)
    return results["fp32"]["top1"] if metric == "top1" else 100.0


def label(entry: dict) -> str:
    return f"{entry['method']} {entry['bits'].upper()}"


def deployed_accuracy(entry: dict, metric: str) -> float | None:
    """The integer program's accuracy where exported, else the fake-quant model's."""
    integer = entry["integer_evaluation"]
    return integer[metric] if integer.get("exported") else entry[metric]


def accelerators(results: dict) -> list[str]:
    """Accelerator names in config order; the first is the one the per-layer plots describe."""
    return [spec["name"] for spec in results["hardware"]]


def cost_of(entry: dict, accelerator: str) -> dict | None:
    return (entry["cost"] or {}).get(accelerator)


def memory_bytes(cost: dict) -> float:
    """Model memory footprint: weights (with rules and zero-points), peak activations, PPOQ outliers."""
    return float(sum(cost["memory_bytes"].values()))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal accuracy, one
    strictly), ordered by cost."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def costed(results: dict, accelerator: str) -> list[dict]:
    """Entries with a cost on `accelerator` (the exported ones)."""
    return [e for e in results["results"] if cost_of(e, accelerator) is not None]


def within_drop(results: dict, entry: dict) -> bool:
    """Whether the entry's accuracy is at most report.max_drop points below FP32."""
    metric, _ = accuracy_metric(results)
    return deployed_accuracy(entry, metric) >= fp32_accuracy(results) - results["config"]["report"]["max_drop"]


def recommended(results: dict, accelerator: str) -> dict | None:
    """The lowest-energy costed entry within report.max_drop points of FP32 (`within_drop`); the most
    accurate costed entry where none is (ties: lower energy, then config order)."""
    metric, _ = accuracy_metric(results)
    entries = costed(results, accelerator)
    if not entries:
        return None
    energy = {id(e): cost_of(e, accelerator)["energy_per_inference_uj"] for e in entries}
    good = [e for e in entries if within_drop(results, e)]
    if good:
        return min(good, key=lambda e: (energy[id(e)], -deployed_accuracy(e, metric)))
    return min(entries, key=lambda e: (-deployed_accuracy(e, metric), energy[id(e)]))


def focus(results: dict) -> dict | None:
    """The entry the per-layer breakdown describes: report.focus, else the recommended one on the first
    accelerator."""
    chosen = results["config"]["report"]["focus"]
    if chosen is not None:
        method, bits = parse_focus(chosen)
        return next(e for e in results["results"] if (e["method"], e["bits"]) == (method, bits))
    return recommended(results, accelerators(results)[0])


def distribution_entry(results: dict) -> dict | None:
    """The entry whose quantizer levels the distribution plot overlays: ADFQ at its lowest bit-width
    (PPOQ and SLQ are the point of that plot), else the focus entry."""
    adfq = [e for e in results["results"] if e["method"] == "adfq" and e["quantizers"]]
    if adfq:
        return min(adfq, key=lambda e: (e["a_bits"], e["w_bits"]))
    entry = focus(results)
    return entry if entry is not None and entry["quantizers"] else None


_BLOCK = re.compile(r"^((?:layers\.\d+\.)?(?:blocks\.\d+|downsample))\.")  # a block, or Swin's patch merging


def layer_energy_rows(cost: dict) -> list[tuple[str, dict[str, float]]]:
    """(layer, energy in pJ by component) in execution order: each GEMM, and each block's (or Swin patch
    merging's) vector ops (LayerNorm, softmax, GELU, requantization, residual adds) as one row after
    that block's GEMMs; vector
    ops outside the blocks (the embedding's requantization, the final LayerNorm) each on their own row,
    before the first block or after the last."""
    block_of = lambda name: (m.group(1) if (m := _BLOCK.match(name)) else None)  # noqa: E731
    gemms = [layer for layer in cost["layers"] if layer["kind"] != "vector"]
    vectors = [layer for layer in cost["layers"] if layer["kind"] == "vector"]
    in_blocks = [i for i, layer in enumerate(vectors) if block_of(layer["name"])]
    before = vectors[:in_blocks[0]] if in_blocks else vectors
    after = vectors[in_blocks[-1] + 1:] if in_blocks else []
    per_block: dict[str, dict[str, float]] = {}
    for layer in vectors:
        if (block := block_of(layer["name"])) is not None:
            row = per_block.setdefault(block, dict.fromkeys(COMPONENTS, 0.0))
            for component, pj in layer["energy_pj"].items():
                row[component] += pj
    rows: list[tuple[str, dict[str, float]]] = []
    first_block = next((i for i, g in enumerate(gemms) if block_of(g["name"])), len(gemms))
    last_block = max((i for i, g in enumerate(gemms) if block_of(g["name"])), default=len(gemms) - 1)
    for i, layer in enumerate(gemms):
        if i == first_block:
            rows += [(v["name"], dict(v["energy_pj"])) for v in before]
        rows.append((layer["name"], dict(layer["energy_pj"])))
        block = block_of(layer["name"])
        following = block_of(gemms[i + 1]["name"]) if i + 1 < len(gemms) else None
        if block is not None and following != block and block in per_block:
            rows.append((f"{block} vector ops", per_block.pop(block)))
        if i == last_block:
            rows += [(v["name"], dict(v["energy_pj"])) for v in after]
    rows += [(f"{block} vector ops", row) for block, row in per_block.items()]
    return rows


def result_rows(results: dict, accelerator: str) -> list[dict]:
    """The results table: FP32 then each (method, bits), with its cost on `accelerator` (None where not
    exported)."""
    metric, _ = accuracy_metric(results)
    rows = [{"label": "FP32", "fake_quant": fp32_accuracy(results), "integer": None, "sqnr_db": None,
             "macs": None, "memory_kib": None, "energy_uj": None, "latency_ms": None}]
    for entry in results["results"]:
        cost = cost_of(entry, accelerator)
        integer = entry["integer_evaluation"]
        rows.append({
            "label": label(entry), "fake_quant": entry[metric],
            "integer": integer[metric] if integer.get("exported") else None, "sqnr_db": entry["sqnr_db"],
            "macs": cost["macs"] if cost else None,
            "memory_kib": memory_bytes(cost) / 1024 if cost else None,
            "energy_uj": cost["energy_per_inference_uj"] if cost else None,
            "latency_ms": cost["latency_ms"] if cost else None})
    return rows


def hardware_rows(results: dict) -> list[dict]:
    """One row per accelerator: its array and memory, and the recommended entry's accuracy and cost."""
    metric, _ = accuracy_metric(results)
    rows = []
    for spec in results["hardware"]:
        entry = recommended(results, spec["name"])
        cost = cost_of(entry, spec["name"]) if entry else None
        rows.append({
            "accelerator": spec["name"], "array": f"{spec['pe_array']['rows']}x{spec['pe_array']['cols']} "
                                                  f"{spec['pe_array']['dataflow'].replace('_', '-')}",
            "clock_mhz": spec["clock_mhz"], "sram_kib": sum(level["size_kib"] for level in spec["sram"]),
            "area_mm2": cost["area_mm2"] if cost else None,
            "recommended": label(entry) if entry else None,
            "accuracy": deployed_accuracy(entry, metric) if entry else None,
            "energy_uj": cost["energy_per_inference_uj"] if cost else None,
            "latency_ms": cost["latency_ms"] if cost else None,
            "tops_per_w": cost["effective_tops_per_w"] if cost else None})
    return rows


# A configuration is flagged when its logit SQNR falls this many dB (about one bit) below the median of
# the other methods at its bit-width, or its agreement with FP32 this many points below theirs.
LOW_SQNR_DB = 6.0
LOW_AGREEMENT_POINTS = 5.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def quality_flags(results: dict) -> list[dict]:
    """What a reader should not miss, as {kind, method, bits, message} (method and bits null for the run):
    `low_sqnr` / `low_agreement` (far below the other methods at the same bits), `asmo_mse_rose` (ASMO
    left some modules' reconstruction MSE higher than calibration had it), `none_within_max_drop`."""
    flags = []
    entries = results["results"]
    for entry in entries:
        others = [e for e in entries if e["bits"] == entry["bits"] and e is not entry]
        for kind, key, margin, unit in (("low_sqnr", "sqnr_db", LOW_SQNR_DB, "dB"),
                                        ("low_agreement", "agreement", LOW_AGREEMENT_POINTS, "points")):
            theirs = [e[key] for e in others if e[key] is not None]
            if entry[key] is None or not theirs or entry[key] >= _median(theirs) - margin:
                continue
            flags.append({"kind": kind, "method": entry["method"], "bits": entry["bits"], "message": (
                f"{label(entry)}: {key} {entry[key]:.2f} against a median of {_median(theirs):.2f} for the "
                f"other methods at {entry['bits'].upper()} (more than {margin:g} {unit} below)")})
        rose = [u["unit"].removeprefix("ASMO ") for u in entry.get("optimization") or []
                if u["mse_after"] > u["mse_before"]]
        if rose:
            flags.append({"kind": "asmo_mse_rose", "method": entry["method"], "bits": entry["bits"], "message": (
                f"{label(entry)}: ASMO raised the reconstruction MSE of {len(rose)} of "
                f"{len(entry['optimization'])} modules ({', '.join(rose[:5])}{', ...' if len(rose) > 5 else ''})")})
    if entries and not any(within_drop(results, e) for e in entries):
        drop = results["config"]["report"]["max_drop"]
        flags.append({"kind": "none_within_max_drop", "method": None, "bits": None, "message": (
            f"no configuration is within {drop:g} point{'' if drop == 1 else 's'} of FP32 (report.max_drop)")})
    return flags
