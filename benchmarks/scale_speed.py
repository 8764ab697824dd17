"""Images/s of one cell's integer evaluation on the local executor and on Ray, sharded by image range.

In one process: DeiT-Tiny (timm, random init, seed 0) quantized with `--method` at `--bits` on CALIB
random images and exported; its IntegerProgram evaluates `--images` random images in batches of BATCH.
`local` is what the local executor does: every batch in this process, at `--threads` torch / Numba
threads. `ray` is what the Ray executor does: the program travels as its `.npz` bytes, the images are
split into `--shards` ranges of whole batches, one Ray task per range with `--threads` threads each, and
the ranges' logits are merged in image order (and checked equal to local's, bit for bit). Each side is
timed as the best of `--reps` after one untimed pass (Numba compiles, Ray starts its workers). The
local executor on every core (threads = CPUs) is timed too, for scale. The last line is `speedup: X`,
Ray's images/s over the local executor's at the same threads per worker.

    python benchmarks/scale_speed.py [--shards 2] [--threads 1] [--images 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import ray
import timm
import torch

from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.export import export
from adfq_sim.intsim.program import IntegerProgram, program_bytes, program_from_bytes
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig, parse_bits
from adfq_sim.runs.cells import eval_ranges
from adfq_sim.threads import apply_threads, run_threads

BATCH, CALIB = 16, 8


def evaluate(program: IntegerProgram, images: torch.Tensor, start: int, stop: int) -> np.ndarray:
    """The simulator's logits for images [start, stop), batch by batch as a run evaluates them."""
    return np.concatenate([run_simulator(program, images[i:min(i + BATCH, stop)])[0]
                           for i in range(start, stop, BATCH)])


@ray.remote
def evaluate_shard(program: bytes, images: torch.Tensor, threads: int) -> np.ndarray:
    """One range's logits on a Ray worker (its images only travel to it, as a worker reads its own)."""
    apply_threads(threads)
    return evaluate(program_from_bytes(program), images, 0, len(images))


def best_of(reps: int, fn) -> tuple[float, object]:
    """The best wall time of `reps` calls after an untimed one, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch / Numba threads per worker")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--bits", default="w8a8")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    calib = [torch.randn(CALIB, 3, 224, 224)]
    images = torch.randn(args.images, 3, 224, 224)
    w_bits, a_bits = parse_bits(args.bits)
    program = export(quantize_model(model, build_recipe(args.method, QuantConfig()), w_bits, a_bits, calib), calib)
    cpus = os.cpu_count() or 1
    print(f"deit_tiny_patch16_224, random init, {args.method} {args.bits}, {args.images} images in batches of "
          f"{BATCH}, best of {args.reps}, {cpus} CPUs")

    with run_threads(args.threads):
        local_s, local = best_of(args.reps, lambda: evaluate(program, images, 0, args.images))
    with run_threads(cpus):
        every_core_s, _ = best_of(args.reps, lambda: evaluate(program, images, 0, args.images))

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"ray {ray.__version__}: {ray.cluster_resources().get('CPU', 0):g} CPUs")
    ranges = eval_ranges(args.images, BATCH, args.shards)
    program_ref = ray.put(program_bytes(program))
    range_refs = [ray.put(images[start:stop].clone()) for start, stop in ranges]

    def on_ray() -> np.ndarray:
        parts = ray.get([evaluate_shard.options(num_cpus=args.threads).remote(program_ref, ref, args.threads)
                         for ref in range_refs])
        return np.concatenate(parts)  # ray.get keeps the submission order: image order

    ray_s, sharded = best_of(args.reps, on_ray)
    ray.shutdown()
    if not np.array_equal(sharded, local):
        raise SystemExit("the sharded logits differ from the local ones")

    local_rate, every_core_rate, ray_rate = (args.images / s for s in (local_s, every_core_s, ray_s))
    print(f"local, {args.threads} threads: {local_rate:.2f} images/s")
    print(f"local, {cpus} threads: {every_core_rate:.2f} images/s")
    print(f"ray, {len(ranges)} shards x {args.threads} threads: {ray_rate:.2f} images/s (logits equal to local's)")
    print(f"ray over local at {cpus} threads: {ray_rate / every_core_rate:.2f}")
    print(f"speedup: {ray_rate / local_rate:.2f}")


if __name__ == "__main__":
    main()
