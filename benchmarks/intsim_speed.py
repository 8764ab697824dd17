"""Images/s of the integer simulator against PyTorch FP32 eager and the int64 reference.

In one process, on the same machine: DeiT-Small (or `--model`, e.g. swin_tiny_patch4_window7_224; timm,
random init, seed 0) on random images, quantized
with `minmax` at W8A8 and W4A4 (calibrated and exported on CALIB random images), batch 8. The simulator
and PyTorch are timed as the best of `--reps` calls after a warm-up call (Numba compiles on its first
call), in each of `--rounds` rounds that time every run in turn, the best round counting (this host's
speed drifts 20-50 % over minutes: interleaving gives both sides the same conditions); the reference,
about 100x slower, runs one batch. ADFQ's formats at W4A4 (PPOQ with alpha 2.5,
~1 % of post-LayerNorm values on the sparse path, SLQ fc2 and log-sqrt2 softmax.V by shifts; ASMO off:
it changes values, not formats) are timed too, with the share of values its sparse path carries. One
line per (method, bits) with its ratio to PyTorch FP32; the last line is `ratio: X`, the slowest of
them.

    python benchmarks/intsim_speed.py [--reps 5] [--rounds 3] [--model NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

import timm
import torch

from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.export import export
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig

BATCH, CALIB = 8, 8


def images_per_second(fn: Callable[[], object], reps: int, warm_up: bool = True) -> float:
    """BATCH over the best wall time of `reps` calls (after one untimed call when warm_up)."""
    if warm_up:
        fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return BATCH / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="deit_small_patch16_224", help="a timm ViT / DeiT / Swin name")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    calib = [torch.randn(CALIB, 3, 224, 224)]
    images = torch.randn(BATCH, 3, 224, 224)
    print(f"{args.model}, random init, batch {BATCH}, best of {args.rounds} rounds x {args.reps} calls, "
          f"torch threads {torch.get_num_threads()}")
    adfq = dataclasses.replace(QuantConfig().adfq, asmo=False, alpha_qkv=2.5, alpha_fc1=2.5)
    runs: dict[str, Callable[[], object]] = {}
    notes = {}
    runs["PyTorch FP32 eager"] = lambda: model(images)
    for method, bits, quant in (("minmax", 8, QuantConfig()), ("minmax", 4, QuantConfig()),
                                ("adfq", 4, QuantConfig(adfq=adfq))):
        qmodel = quantize_model(model, build_recipe(method, quant), bits, bits, calib)
        program = export(qmodel, calib)
        label = f"{method} W{bits}A{bits}"
        runs[label] = lambda program=program: run_simulator(program, images)
        notes[label] = sparse_share(qmodel, images)
        if method == "minmax":
            ref_rate = images_per_second(lambda: run_reference(program, images), 1, warm_up=False)
            notes[label] += f"; int64 reference {ref_rate:.2f} images/s"
    # every run timed in each round, the best round counts: the machine's load drifts over minutes, and
    # interleaving gives PyTorch and the simulator the same conditions
    rates = {label: 0.0 for label in runs}
    with torch.no_grad():
        for _ in range(args.rounds):
            for label, run in runs.items():
                rates[label] = max(rates[label], images_per_second(run, args.reps))
    torch_rate = rates.pop("PyTorch FP32 eager")
    print(f"PyTorch FP32 eager      {torch_rate:8.2f} images/s")
    ratios = {}
    for label, rate in rates.items():
        ratios[label] = rate / torch_rate
        print(f"{label:12s} simulator {rate:8.2f} images/s  ({ratios[label]:.2f}x PyTorch FP32){notes[label]}")
    slowest = min(ratios, key=ratios.get)
    print(f"slowest: {slowest}")
    print(f"ratio: {ratios[slowest]:.3f}")


def sparse_share(qmodel, images: torch.Tensor) -> str:
    """PPOQ's sparse-path share of the post-LayerNorm values on these images ('' without PPOQ)."""
    qmodel.reset_outlier_counters()
    with torch.no_grad():
        qmodel(images)
    counts = qmodel.outlier_counts().values()
    seen = sum(s for _, s in counts)
    return f", sparse path {100 * sum(c for c, _ in counts) / seen:.2f} % of post-LN values" if seen else ""

if __name__ == "__main__":
    main()
