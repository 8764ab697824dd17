"""Run an IntegerProgram with the slow int64 NumPy ops of `reference` and `nonlinear_reference`.

The obviously-correct executor: integers only from the quantized image to the head accumulator.
Floats appear twice, as the contract allows: quantizing the input image (the same float32 rule as
the fake-quant input quantizer, so its codes agree) and scaling the head accumulator into logits.
Images run in chunks of CHUNK because GELU's reference step function compares every accumulator with
every threshold at once.

The op sequence (`run_program`) takes its arithmetic from an `Ops` table, so that the fast simulator
(`execute`) runs this very sequence with its Numba kernels instead of restating it: the two executors
can differ only in their kernels, which have their own equality tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from adfq_sim.intsim import nonlinear_reference
from adfq_sim.intsim.dyadic import requantize
from adfq_sim.intsim.program import RESIDUAL_MAX, Block, Gemm, IntegerProgram, Requant
from adfq_sim.intsim.reference import dense_gemm

CHUNK = 8


@dataclass(frozen=True)
class Ops:
    """The integer arithmetic an executor plugs into the shared op sequence.

    operand(codes, zp): GEMM operand codes - zp, in the executor's storage dtype.
    linear(codes, gemm): the weight layer's accumulator ((codes - in_zero_point) @ W^T + bias).
    matmul(a, w): A @ W^T of two activation operands, A [G, M, K], W [G, N, K].
    requant(acc, r): the dyadic rule of `r` to codes.
    add(a, ra, b, rb): residual add, both operands requantized, the sum clamped to the 16-bit stream.
    layernorm, softmax, gelu: the integer non-linear ops on int32 inputs.
    """

    operand: Callable[[np.ndarray, int], np.ndarray]
    linear: Callable[[np.ndarray, Gemm], np.ndarray]
    matmul: Callable[[np.ndarray, np.ndarray], np.ndarray]
    requant: Callable[[np.ndarray, Requant], np.ndarray]
    add: Callable[[np.ndarray, Requant, np.ndarray, Requant], np.ndarray]
    layernorm: Callable
    softmax: Callable
    gelu: Callable


def _operand(codes: np.ndarray, zp: int) -> np.ndarray:
    return codes.astype(np.int64) - zp


def _apply(acc: np.ndarray, r: Requant) -> np.ndarray:
    return requantize(acc, r.m, r.s, r.lo - r.zero_point, r.hi - r.zero_point) + r.zero_point


def _linear(codes: np.ndarray, g: Gemm) -> np.ndarray:
    return dense_gemm(_operand(codes, g.in_zero_point), g.weight, g.bias)


def _add(a: np.ndarray, ra: Requant, b: np.ndarray, rb: Requant) -> np.ndarray:
    return np.clip(_apply(a, ra) + _apply(b, rb), -RESIDUAL_MAX, RESIDUAL_MAX)


REFERENCE_OPS = Ops(operand=_operand, linear=_linear, matmul=dense_gemm, requant=_apply, add=_add,
                    layernorm=nonlinear_reference.layernorm, softmax=nonlinear_reference.softmax,
                    gelu=nonlinear_reference.gelu)


def _image_codes(images: np.ndarray, p: IntegerProgram) -> np.ndarray:
    """UniformQuantizer's rule in float32: round_half_up(clamp(x / scale + zp, 0, qmax))."""
    x = images.astype(np.float32) / np.float32(p.image_scale) + np.float32(p.image_zero_point)
    return np.floor(np.clip(x, 0, p.image_qmax) + np.float32(0.5)).astype(np.int64)


def _patches(codes: np.ndarray, patch: int) -> np.ndarray:
    """[B, C, H, W] -> [B, T, C * patch * patch], tokens row-major, features in the conv weight's order."""
    b, c, h, w = codes.shape
    x = codes.reshape(b, c, h // patch, patch, w // patch, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def _block(r: np.ndarray, blk: Block, ops: Ops, trace: dict[str, np.ndarray], i: int) -> np.ndarray:
    b, t, d = r.shape
    heads, hd = blk.heads, d // blk.heads
    rows = r.reshape(b * t, d)
    x = ops.layernorm(rows.astype(np.int32, copy=False), blk.norm1)
    qkv = ops.linear(x, blk.qkv)
    q, k, v = (ops.requant(qkv[:, j * d:(j + 1) * d], rq) for j, rq in enumerate((blk.to_q, blk.to_k, blk.to_v)))

    def split(a: np.ndarray, zp: int) -> np.ndarray:  # [B*T, D] -> [B*H, T, hd], zero-point removed
        return ops.operand(a, zp).reshape(b, t, heads, hd).transpose(0, 2, 1, 3).reshape(b * heads, t, hd)

    scores = ops.matmul(split(q, blk.q_zero_point), split(k, blk.k_zero_point))
    probs = ops.softmax(scores.reshape(-1, t).astype(np.int32, copy=False), blk.softmax)
    vt = split(v, blk.v_zero_point).transpose(0, 2, 1)
    pv = ops.matmul(ops.operand(probs, blk.probs_zero_point).reshape(b * heads, t, t), vt)
    pin = ops.requant(pv.reshape(b, heads, t, hd).transpose(0, 2, 1, 3).reshape(b * t, d), blk.to_proj_in)
    mid = ops.add(rows, blk.res_to_mid, ops.linear(pin, blk.proj), blk.attn_to_res)
    y = ops.layernorm(mid.astype(np.int32, copy=False), blk.norm2)
    g = ops.gelu(ops.requant(ops.linear(y, blk.fc1), blk.to_gelu).astype(np.int32, copy=False), blk.gelu)
    out = ops.add(mid, blk.mid_to_out, ops.linear(g, blk.fc2), blk.mlp_to_res)
    for name, codes in (("qkv_in", x), ("q", q), ("k", k), ("v", v), ("probs", probs), ("proj_in", pin),
                        ("residual_mid", mid), ("fc1_in", y), ("fc2_in", g), ("residual_out", out)):
        trace[f"blocks.{i}.{name}"] = codes.reshape(b, -1)
    return out.reshape(b, t, d)


def _run_chunk(p: IntegerProgram, images: np.ndarray, ops: Ops) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    trace: dict[str, np.ndarray] = {}
    codes = _image_codes(images, p)
    trace["embed_in"] = codes.reshape(len(codes), -1)
    patches = _patches(codes, p.patch)
    b, n, kdim = patches.shape
    emb = ops.requant(ops.linear(patches.reshape(b * n, kdim), p.embed), p.embed_to_res).reshape(b, n, -1)
    emb = np.clip(emb + p.pos_codes, -RESIDUAL_MAX, RESIDUAL_MAX)
    r = np.concatenate([np.broadcast_to(p.cls_code.astype(emb.dtype), (b, 1, emb.shape[2])), emb], axis=1)
    trace["residual_in"] = r.reshape(b, -1)
    for i, blk in enumerate(p.blocks):
        r = _block(r, blk, ops, trace, i)
    head_in = ops.layernorm(r[:, 0].astype(np.int32), p.norm)  # token pooling: only the class token matters
    trace["head_in"] = head_in
    logits = ops.linear(head_in, p.head).astype(np.float64) * p.logit_scale
    return logits, trace


def run_program(program: IntegerProgram, images: np.ndarray | torch.Tensor, ops: Ops, chunk: int
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The shared op sequence with `ops`, `chunk` images at a time: logits and the codes of every tensor."""
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    parts = [_run_chunk(program, images[i:i + chunk], ops) for i in range(0, len(images), chunk)]
    if len(parts) == 1:  # one chunk: no copy (concatenating every traced tensor costs a GEMM's time)
        return parts[0]
    trace = {key: np.concatenate([t[key] for _, t in parts]) for key in parts[0][1]}
    return np.concatenate([logits for logits, _ in parts]), trace


def run_reference(program: IntegerProgram, images: np.ndarray | torch.Tensor
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [B, classes] (float64) and the integer codes of every quantized tensor, [B, ...] each."""
    return run_program(program, images, REFERENCE_OPS, CHUNK)
