"""Calibration wall time per method on the demo, and ASMO time per module on DeiT-Small.

Part 1: every method at W4A4 on the embedded demo (128 calibration images), with the ratio to
`minmax` calibration measured in the same process.
Part 2: ASMO on a random-init DeiT-Small (random images): seconds per iteration and per module for the
first blocks' attention and MLP modules, at the reference's batch 32, extrapolated to the reference's
300 iterations per module. The ADFQ-ViT reference implementation is said to spend about 10 s per
attention and 14 s per MLP module for that on one H100, a figure whose source we have not traced
(docs/references.md, "Figures without a traced source"); on a CPU it is only a scale.

    python benchmarks/calibration_speed.py [--images 64] [--iters 20] [--blocks 1] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import timm
import torch

from adfq_sim.data.demo import load_demo_split
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from adfq_sim.quant.asmo import AsmoSettings, _capture, _inputs, optimize_unit, resolve_device
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import METHODS, build_recipe
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.options import AdfqConfig, QuantConfig

REFERENCE_H100_S = {"attn": 10.0, "mlp": 14.0}  # per module, 300 iterations, batch 32
REFERENCE_ITERS = 300


def demo_calibration() -> None:
    model = load_model(ModelConfig()).model
    calib = load_demo_split("calib")[0][:128]
    batches = [calib[:64], calib[64:]]
    times = {}
    for method in METHODS:
        start = time.perf_counter()
        quantize_model(model, build_recipe(method, QuantConfig()), 4, 4, batches)
        times[method] = time.perf_counter() - start
    for method, seconds in times.items():
        print(f"demo W4A4 calibration {method:11s} {seconds:8.2f} s   ratio to minmax {seconds / times['minmax']:8.1f}")


def deit_small_asmo(images: int, iters: int, blocks: int, device_name: str) -> None:
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    quant = QuantConfig(adfq=dataclasses.replace(AdfqConfig(), asmo=False, profile="paper"))
    start = time.perf_counter()
    qmodel = QuantModel(model, build_recipe("adfq", quant), 4, 4)
    qmodel.calibrate([x[i:i + 32] for i in range(0, images, 32)])
    print(f"DeiT-S W4A4 init (PPOQ/SLQ/uniform calibration, {images} images): {time.perf_counter() - start:.1f} s")
    settings = dataclasses.replace(AsmoSettings.from_config(quant.adfq), iters=iters, images=images, device=device_name)
    qmodel.to(device)
    model.to(device)
    x = x.to(device)
    for p in list(qmodel.parameters()) + list(model.parameters()):
        p.requires_grad_(False)
    for block in range(blocks):
        for part in ("attn", "mlp"):
            name = f"blocks.{block}.{part}"
            unit = qmodel.model.get_submodule(name)
            q_calls, _ = _capture(qmodel.model, unit, x, 32, with_output=False)
            fp_calls, fp_out = _capture(model, model.get_submodule(name), x, 32, with_output=True)
            start = time.perf_counter()
            optimize_unit(unit, _inputs(q_calls), _inputs(fp_calls), fp_out, q_calls[0][1], settings,
                          torch.Generator().manual_seed(0), name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_iter = (time.perf_counter() - start) / iters
            at_ref = per_iter * REFERENCE_ITERS
            print(f"DeiT-S ASMO {name:14s} {per_iter * 1e3:8.1f} ms/iter  {at_ref:7.1f} s per {REFERENCE_ITERS} iters "
                  f"on {device.type}; reference on one H100: {REFERENCE_H100_S[part]:.0f} s "
                  f"(ratio {REFERENCE_H100_S[part] / at_ref:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="DeiT-S images (reference: 1024)")
    parser.add_argument("--iters", type=int, default=20, help="ASMO iterations timed per module")
    parser.add_argument("--blocks", type=int, default=1, help="DeiT-S blocks whose modules are timed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    if not args.skip_demo:
        demo_calibration()
    deit_small_asmo(args.images, args.iters, args.blocks, args.device)


if __name__ == "__main__":
    main()
