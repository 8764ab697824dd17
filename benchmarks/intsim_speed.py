"""Images/s of the integer simulator against PyTorch FP32 eager and the int64 reference.

In one process, on the same machine: DeiT-Small (or `--model`, e.g. swin_tiny_patch4_window7_224; timm,
random init, seed 0) on random images, quantized
with `minmax` at W8A8 and W4A4 (calibrated and exported on CALIB random images), batch 8. The simulator
and PyTorch are timed as the best of `--reps` calls after a warm-up call (Numba compiles on its first
call); the reference, about 100x slower, runs one batch. ADFQ's formats at W4A4 (PPOQ with alpha 2.5,
~1 % of post-LayerNorm values on the sparse path, SLQ fc2 and log-sqrt2 softmax.V by shifts; ASMO off:
it changes values, not formats) are timed too, with the share of values its sparse path carries. One
line per (method, bits) with its ratio to PyTorch FP32; the last line is `ratio: X`, the slowest of
them (PyTorch timed again at the end, the faster timing used).

    python benchmarks/intsim_speed.py [--reps 5] [--model NAME]
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
    parser.add_argument("--model", default="deit_small_patch16_224", help="a timm ViT / DeiT / Swin name")
    args = parser.parse_args()
    reps = args.reps
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    calib = [torch.randn(CALIB, 3, 224, 224)]
    images = torch.randn(BATCH, 3, 224, 224)
    print(f"{args.model}, random init, batch {BATCH}, best of {reps}, torch threads {torch.get_num_threads()}")

    with torch.no_grad():
        torch_rate = images_per_second(lambda: model(images), reps)
    print(f"PyTorch FP32 eager      {torch_rate:8.2f} images/s")
    adfq = dataclasses.replace(QuantConfig().adfq, asmo=False, alpha_qkv=2.5, alpha_fc1=2.5)
    ratios = {}
    for method, bits, quant in (("minmax", 8, QuantConfig()), ("minmax", 4, QuantConfig()),
                                ("adfq", 4, QuantConfig(adfq=adfq))):
        qmodel = quantize_model(model, build_recipe(method, quant), bits, bits, calib)
        program = export(qmodel, calib)
        rate = images_per_second(lambda: run_simulator(program, images), reps)
        label = f"{method} W{bits}A{bits}"
        ratios[label] = rate / torch_rate
        print(f"{label:12s} simulator {rate:8.2f} images/s  ({ratios[label]:.2f}x PyTorch FP32){sparse_share(qmodel, images)}")
        if method == "minmax":
            ref_rate = images_per_second(lambda: run_reference(program, images), 1, warm_up=False)
            print(f"{label:12s} int64 reference {ref_rate:8.2f} images/s  (simulator {rate / ref_rate:.1f}x faster)")
    with torch.no_grad():  # again at the end: the machine's load drifts; the faster of the two counts
        again = images_per_second(lambda: model(images), reps)
    if again > torch_rate:
        print(f"PyTorch FP32 eager again {again:8.2f} images/s: ratios below against it")
        ratios = {label: r * torch_rate / again for label, r in ratios.items()}
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
