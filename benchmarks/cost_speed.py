"""Accelerator variants priced per second for DeiT-Small, by the vectorised sweep against `cost` one by one.

In one process: the DeiT-Small workload (timm, random init, `minmax` W8A8, exported once) priced on
VARIANTS variants of `edge_npu` (PE rows x cols x SRAM size x DRAM bandwidth) by one `sweep` call,
and on BASELINE variants by calling `cost` once per variant. The last line is `variants/s: X` (the
sweep's rate); target >= 10,000.

    python benchmarks/cost_speed.py
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import timm
import torch

from adfq_sim.intsim.export import export
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig
from hw_models.cost import cost, sweep
from hw_models.spec import load_spec
from hw_models.workload import workload

BASELINE = 50


def main() -> None:
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    calib = [torch.randn(2, 3, 224, 224)]
    load = workload(export(quantize_model(model, build_recipe("minmax", QuantConfig()), 8, 8, calib), calib))
    spec = load_spec("edge_npu")
    rows = np.array([4, 8, 12, 16, 24, 32, 48, 64, 96, 128])[:, None, None, None]
    cols = np.array([4, 8, 12, 16, 24, 32, 48, 64, 96, 128])[None, :, None, None]
    sram = np.array([64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768], float)[None, None, :, None]
    bandwidth = np.array([0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256])[None, None, None, :]
    variants = rows.size * cols.size * sram.size * bandwidth.size
    start = time.perf_counter()
    result = sweep(load, spec, rows=rows, cols=cols, sram_kib=sram, bandwidth_gb_s=bandwidth)
    swept = variants / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(BASELINE):
        cost(load, dataclasses.replace(spec, pe_array=dataclasses.replace(spec.pe_array, rows=int(4 + i))))
    one_by_one = BASELINE / (time.perf_counter() - start)
    edp = result["energy_pj"] * result["latency_s"]  # energy-delay product: bandwidth and array size both count
    best = np.unravel_index(np.argmin(edp), edp.shape)
    print(f"DeiT-Small {load.macs() / 1e9:.2f} GMACs, {variants} variants of edge_npu")
    print(f"lowest energy x latency: {result['energy_pj'][best] * 1e-6:.0f} uJ, "
          f"{result['latency_s'][best] * 1e3:.2f} ms at rows {rows.ravel()[best[0]]}, "
          f"cols {cols.ravel()[best[1]]}, SRAM {sram.ravel()[best[2]]:.0f} KiB, {bandwidth.ravel()[best[3]]} GB/s")
    print(f"cost() one variant at a time: {one_by_one:,.0f} variants/s; sweep: {swept / one_by_one:,.0f}x faster")
    print(f"variants/s: {swept:.0f}")


if __name__ == "__main__":
    main()
