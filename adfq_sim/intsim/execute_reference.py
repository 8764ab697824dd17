"""Run an IntegerProgram with the slow int64 NumPy ops of `reference` and `nonlinear_reference`.

The obviously-correct executor: integers only from the quantized image to the head accumulator.
Floats appear twice, as the contract allows: quantizing the input image (the same float32 rule as
the fake-quant input quantizer, so its codes agree) and scaling the head accumulator into logits.
Images run in chunks of CHUNK because GELU's reference step function compares every accumulator with
every threshold at once.
"""

from __future__ import annotations

import numpy as np
import torch

from adfq_sim.intsim.dyadic import requantize
from adfq_sim.intsim.nonlinear_reference import gelu, layernorm, softmax
from adfq_sim.intsim.program import RESIDUAL_MAX, Block, Gemm, IntegerProgram, Requant
from adfq_sim.intsim.reference import dense_gemm

CHUNK = 8


def _apply(acc: np.ndarray, r: Requant) -> np.ndarray:
    return requantize(acc, r.m, r.s, r.lo - r.zero_point, r.hi - r.zero_point) + r.zero_point


def _linear(codes: np.ndarray, g: Gemm) -> np.ndarray:
    return dense_gemm(codes.astype(np.int64) - g.in_zero_point, g.weight, g.bias)


def _add(a: np.ndarray, ra: Requant, b: np.ndarray, rb: Requant) -> np.ndarray:
    """Residual add: both operands on the new scale, the sum clamped to the 16-bit stream."""
    return np.clip(_apply(a, ra) + _apply(b, rb), -RESIDUAL_MAX, RESIDUAL_MAX)


def _image_codes(images: np.ndarray, p: IntegerProgram) -> np.ndarray:
    """UniformQuantizer's rule in float32: round_half_up(clamp(x / scale + zp, 0, qmax))."""
    x = images.astype(np.float32) / np.float32(p.image_scale) + np.float32(p.image_zero_point)
    return np.floor(np.clip(x, 0, p.image_qmax) + np.float32(0.5)).astype(np.int64)


def _patches(codes: np.ndarray, patch: int) -> np.ndarray:
    """[B, C, H, W] -> [B, T, C * patch * patch], tokens row-major, features in the conv weight's order."""
    b, c, h, w = codes.shape
    x = codes.reshape(b, c, h // patch, patch, w // patch, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def _block(r: np.ndarray, blk: Block, trace: dict[str, np.ndarray], i: int) -> np.ndarray:
    b, t, d = r.shape
    heads, hd = blk.heads, d // blk.heads
    rows = r.reshape(b * t, d)
    x = layernorm(rows.astype(np.int32), blk.norm1)
    qkv = _linear(x, blk.qkv)
    q, k, v = (_apply(qkv[:, j * d:(j + 1) * d], rq) for j, rq in enumerate((blk.to_q, blk.to_k, blk.to_v)))

    def split(a: np.ndarray, zp: int) -> np.ndarray:  # [B*T, D] -> [B*H, T, hd], zero-point removed
        return (a - zp).reshape(b, t, heads, hd).transpose(0, 2, 1, 3).reshape(b * heads, t, hd)

    scores = dense_gemm(split(q, blk.q_zero_point), split(k, blk.k_zero_point))
    probs = softmax(scores.reshape(-1, t).astype(np.int32), blk.softmax)
    vt = split(v, blk.v_zero_point).transpose(0, 2, 1)
    pv = dense_gemm(probs.reshape(b * heads, t, t).astype(np.int64) - blk.probs_zero_point, vt)
    pin = _apply(pv.reshape(b, heads, t, hd).transpose(0, 2, 1, 3).reshape(b * t, d), blk.to_proj_in)
    mid = _add(rows, blk.res_to_mid, _linear(pin, blk.proj), blk.attn_to_res)
    y = layernorm(mid.astype(np.int32), blk.norm2)
    g = gelu(_apply(_linear(y, blk.fc1), blk.to_gelu).astype(np.int32), blk.gelu)
    out = _add(mid, blk.mid_to_out, _linear(g, blk.fc2), blk.mlp_to_res)
    for name, codes in (("qkv_in", x), ("q", q), ("k", k), ("v", v), ("probs", probs), ("proj_in", pin),
                        ("residual_mid", mid), ("fc1_in", y), ("fc2_in", g), ("residual_out", out)):
        trace[f"blocks.{i}.{name}"] = codes.reshape(b, -1)
    return out.reshape(b, t, d)


def _run_chunk(p: IntegerProgram, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    trace: dict[str, np.ndarray] = {}
    codes = _image_codes(images, p)
    trace["embed_in"] = codes.reshape(len(codes), -1)
    patches = _patches(codes, p.patch)
    b, n, kdim = patches.shape
    emb = _apply(_linear(patches.reshape(b * n, kdim), p.embed), p.embed_to_res).reshape(b, n, -1)
    emb = np.clip(emb + p.pos_codes, -RESIDUAL_MAX, RESIDUAL_MAX)
    r = np.concatenate([np.broadcast_to(p.cls_code.astype(np.int64), (b, 1, emb.shape[2])), emb], axis=1)
    trace["residual_in"] = r.reshape(b, -1)
    for i, blk in enumerate(p.blocks):
        r = _block(r, blk, trace, i)
    head_in = layernorm(r[:, 0].astype(np.int32), p.norm)  # token pooling: only the class token matters
    trace["head_in"] = head_in
    logits = _linear(head_in, p.head).astype(np.float64) * p.logit_scale
    return logits, trace


def run_reference(program: IntegerProgram, images: np.ndarray | torch.Tensor
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [B, classes] (float64) and the integer codes of every quantized tensor, [B, ...] each."""
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    parts = [_run_chunk(program, images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)]
    trace = {key: np.concatenate([t[key] for _, t in parts]) for key in parts[0][1]}
    return np.concatenate([logits for logits, _ in parts]), trace
