"""Images/s of the integer simulator against PyTorch FP32 eager and the int64 reference.

In one process, on the same machine: DeiT-Small (or `--model`, e.g. swin_tiny_patch4_window7_224; timm,
random init, seed 0) on random images, quantized
with `minmax` at W8A8 and W4A4 (calibrated and exported on CALIB random images), batch 8. The simulator
and PyTorch are timed as the best of `--reps` calls after a warm-up call (Numba compiles on its first
call); the reference, about 100x slower, runs one batch. For scale, ADFQ's formats at W4A4 (PPOQ with alpha 2.5,
~1 % of post-LayerNorm values on the sparse path, SLQ fc2 and log-sqrt2 softmax.V by shifts; ASMO off:
it changes values, not formats) are timed too. The last line is `ratio: X`, the minmax simulator's
W4A4 images/s over PyTorch FP32's.

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
    sim_rates = {}
    for bits in (8, 4):
        program = export(quantize_model(model, build_recipe("minmax", QuantConfig()), bits, bits, calib), calib)
        sim_rates[bits] = images_per_second(lambda: run_simulator(program, images), reps)
        ref_rate = images_per_second(lambda: run_reference(program, images), 1, warm_up=False)
        print(f"W{bits}A{bits} simulator       {sim_rates[bits]:8.2f} images/s  "
              f"({sim_rates[bits] / torch_rate:.2f}x PyTorch FP32)")
        print(f"W{bits}A{bits} int64 reference {ref_rate:8.2f} images/s  "
              f"(simulator {sim_rates[bits] / ref_rate:.1f}x faster)")
    adfq = dataclasses.replace(QuantConfig().adfq, asmo=False, alpha_qkv=2.5, alpha_fc1=2.5)
    program = export(quantize_model(model, build_recipe("adfq", QuantConfig(adfq=adfq)), 4, 4, calib), calib)
    adfq_rate = images_per_second(lambda: run_simulator(program, images), reps)
    print(f"W4A4 adfq simulator     {adfq_rate:8.2f} images/s  ({adfq_rate / torch_rate:.2f}x PyTorch FP32)")
    print(f"ratio: {sim_rates[4] / torch_rate:.3f}")


if __name__ == "__main__":
    main()
