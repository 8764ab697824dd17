"""Our cost model against SCALE-Sim's cycles and ZigZag's energy and latency, on the files we export.

DeiT-Small (or `--model`; timm, random init, seed 0), `minmax` W8A8 (one MAC lane: the tools have no
packed lanes), exported and priced on each `--presets` accelerator; the patch embedding, the first
`--blocks` blocks and the head (blocks repeat the same GEMMs) are written with `hw_models.export_scalesim`
/ `export_zigzag` and run by the tools where their interpreters are given (each in its own environment:
SCALE-Sim 3.0.0 needs numpy < 2, ZigZag is `zigzag-dse`, docs/cost-model.md). Per GEMM it prints our
compute cycles over SCALE-Sim's "Total Cycles" (its rows of one GEMM summed), and our energy and cycles
over ZigZag's `energy_total` and `latency_total2`; then per preset the worst ratio. The SCALE-Sim lines
also give the ratio with the spec's `pe_array.edge_folds` switched to the other setting ("trim" for the
default "full", SCALE-Sim's own edge-fold count).

    python benchmarks/crosscheck.py --scalesim-python /path/to/venv/bin/python \\
        [--zigzag-python /path/to/venv/bin/python] [--presets edge_npu eyeriss_like] [--blocks 1]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

import timm
import torch

from adfq_sim.intsim.export import export
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig
from adfq_sim.workload_export import write_files
from hw_models import export_scalesim, export_zigzag
from hw_models.cost import cost
from hw_models.dataflow import EDGE_FOLDS
from hw_models.spec import load_spec
from hw_models.workload import Workload, workload

ZIGZAG_RUN = """
import json, logging, sys
logging.disable(logging.WARNING)
from zigzag.api import get_hardware_performance_zigzag
folder, spec = sys.argv[1], sys.argv[2]
_, _, cmes = get_hardware_performance_zigzag(f"{folder}/workload.yaml", f"{folder}/{spec}.yaml",
    f"{folder}/{spec}-mapping.yaml", opt="energy", dump_folder=f"{folder}/zigzag-out", loma_show_progress_bar=False)
print(json.dumps([[c.layer.name, c.energy_total, c.latency_total2] for c, _ in cmes[0][1]]))
"""


def first_blocks(load: Workload, blocks: int) -> Workload:
    keep = [g for g in load.gemms if not g.name.startswith("blocks.") or int(g.name.split(".")[1]) < blocks]
    return dataclasses.replace(load, gemms=keep, vector_ops=[])


def scalesim_cycles(python: str, load: Workload, spec, folder: Path) -> dict[str, int]:
    """SCALE-Sim's Total Cycles per GEMM (its rows of a grouped GEMM summed)."""
    run_name = f"crosscheck_{spec.name}"
    write_files(folder, export_scalesim.files(load, spec, run_name))
    subprocess.run([python, "-m", "scalesim.scale", "-c", str(folder / f"{spec.name}.cfg"), "-t",
                    str(folder / "topology.csv"), "-p", str(folder / "logs"), "-i", "gemm", "-l",
                    str(folder / "layout.csv")], check=True, capture_output=True, text=True)
    with open(folder / "logs" / run_name / "COMPUTE_REPORT.csv") as report:
        rows = list(csv.reader(report))
    column = [name.strip() for name in rows[0]].index("Total Cycles")
    totals: dict[str, int] = {}
    for (_, g), row in zip(load.products(), rows[1:], strict=True):
        totals[g.name] = totals.get(g.name, 0) + int(float(row[column]))
    return totals


def zigzag_costs(python: str, load: Workload, spec, folder: Path) -> dict[str, tuple[float, float]]:
    """ZigZag's (energy pJ, latency cycles) per GEMM (its layers of a grouped GEMM summed)."""
    write_files(folder, export_zigzag.files(load, spec, spec.name))
    out = subprocess.run([python, "-c", ZIGZAG_RUN, str(folder), spec.name], check=True, capture_output=True,
                         text=True).stdout
    gemm_of = {name: g.name for name, g in load.products()}
    totals: dict[str, tuple[float, float]] = {}
    for name, energy, latency in json.loads(out.strip().splitlines()[-1]):
        e, c = totals.get(gemm_of[name], (0.0, 0.0))
        totals[gemm_of[name]] = (e + energy, c + latency)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--presets", nargs="+", default=["edge_npu", "eyeriss_like"])
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--scalesim-python", help="an interpreter with scalesim installed (skipped without)")
    parser.add_argument("--zigzag-python", help="an interpreter with zigzag-dse installed (skipped without)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    calib = [torch.randn(2, 3, 224, 224)]
    load = first_blocks(workload(export(quantize_model(model, build_recipe("minmax", QuantConfig()), 8, 8, calib),
                                        calib)), args.blocks)
    print(f"{args.model}, random init, minmax W8A8: {len(load.gemms)} GEMMs (patch embedding, {args.blocks} "
          f"block(s), head)")
    for preset in args.presets:
        spec = load_spec(preset)
        ours = {layer.name: layer for layer in cost(load, spec).layers}
        other = next(e for e in EDGE_FOLDS if e != spec.pe_array.edge_folds)
        other_spec = dataclasses.replace(spec, pe_array=dataclasses.replace(spec.pe_array, edge_folds=other))
        alt = {layer.name: layer.compute_cycles for layer in cost(load, other_spec).layers}
        print(f"\n{preset}: {spec.pe_array.rows}x{spec.pe_array.cols} {spec.pe_array.dataflow}")
        with tempfile.TemporaryDirectory() as tmp:
            if args.scalesim_python:
                theirs = scalesim_cycles(args.scalesim_python, load, spec, Path(tmp) / "scalesim")
                ratios = {name: ours[name].compute_cycles / cycles for name, cycles in theirs.items()}
                alt_ratios = {name: alt[name] / cycles for name, cycles in theirs.items()}
                for name, cycles in theirs.items():
                    print(f"  SCALE-Sim {name:28s} ours {ours[name].compute_cycles:>10,} theirs {cycles:>10,} "
                          f"ratio {ratios[name]:.5f} (edge_folds {other}: {alt_ratios[name]:.4f})")
                print(f"  SCALE-Sim cycles: ratio {min(ratios.values()):.5f} .. {max(ratios.values()):.5f} "
                      f"(edge_folds {other}: {min(alt_ratios.values()):.4f} .. {max(alt_ratios.values()):.4f})")
            if args.zigzag_python:
                theirs_zz = zigzag_costs(args.zigzag_python, load, spec, Path(tmp) / "zigzag")
                energy = {name: sum(ours[name].energy_pj.values()) / e for name, (e, _) in theirs_zz.items()}
                cycles = {name: ours[name].cycles / c for name, (_, c) in theirs_zz.items()}
                for name in theirs_zz:
                    print(f"  ZigZag {name:28s} energy ratio {energy[name]:.3f}  cycles ratio {cycles[name]:.3f}")
                print(f"  ZigZag energy: ratio {min(energy.values()):.3f} .. {max(energy.values()):.3f}; cycles "
                      f"{min(cycles.values()):.3f} .. {max(cycles.values()):.3f}")


if __name__ == "__main__":
    main()
