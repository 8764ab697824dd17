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
from adfq_sim.intsim.program import (RESIDUAL_MAX, Block, Gemm, IntegerProgram, LogOperand, Operand, Requant,
                                     TwinOperand, UniformOperand)
from adfq_sim.intsim.reference import dense_gemm, log_shift_gemm, outlier_gemm, saturate, twin_levels

CHUNK = 8


@dataclass(frozen=True)
class Ops:
    """The integer arithmetic an executor plugs into the shared op sequence.

    operand(codes, zp): GEMM operand codes - zp (zp an int or a per-row column), in the storage dtype.
    weight(gemm): the layer's weight operand W [N, K] in the executor's storage.
    plain_input(codes, gemm): (A, bias) of a plain layer (`_plain`) with A @ W^T + bias equal to
      (codes - zero_point) @ W^T + gemm.bias; the simulator keeps the codes and folds the zero-point
      into the bias.
    dense(a, w, bias): A @ W^T (+ int32 bias [N]), A [(G,) M, K], W [N, K] or [G, N, K].
    dense_requant(a, w, bias, r): requant(dense(a, w, bias), r) (fused in the simulator).
    log_shift(p, b, e, base, zero_code): log codes P (uint8) times B^T by shifts (`reference`).
    outliers(rows, cols, codes, w, m): the sparse outlier products alone, int64 [m, N].
    requant(acc, r): the dyadic rule of `r` to codes.
    add(a, ra, b, rb): residual add, both operands requantized, the sum clamped to the residual range.
    layernorm, softmax, gelu: the integer non-linear ops on int32 inputs.
    """

    operand: Callable[[np.ndarray, "int | np.ndarray"], np.ndarray]
    weight: Callable[[Gemm], np.ndarray]
    plain_input: Callable[[np.ndarray, Gemm], tuple[np.ndarray, np.ndarray]]
    dense: Callable[..., np.ndarray]
    dense_requant: Callable[..., np.ndarray]
    log_shift: Callable[..., np.ndarray]
    outliers: Callable[..., np.ndarray]
    requant: Callable[[np.ndarray, Requant], np.ndarray]
    add: Callable[[np.ndarray, Requant, np.ndarray, Requant], np.ndarray]
    layernorm: Callable
    softmax: Callable
    gelu: Callable


def _operand(codes: np.ndarray, zp: "int | np.ndarray") -> np.ndarray:
    return codes.astype(np.int64) - zp


def rule_rows(r: Requant, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) broadcastable to an accumulator [rows, N]: per token x channel rules repeat every T rows."""
    if r.m.ndim < 2:
        return r.m, r.s
    token = np.arange(rows) % r.m.shape[0]
    return r.m[token], r.s[token]


def _apply(acc: np.ndarray, r: Requant) -> np.ndarray:
    m, s = rule_rows(r, acc.shape[0])
    return requantize(acc, m, s, r.lo - r.zero_point, r.hi - r.zero_point, r.offset) + r.zero_point


def _add(a: np.ndarray, ra: Requant, b: np.ndarray, rb: Requant) -> np.ndarray:
    return np.clip(_apply(a, ra) + _apply(b, rb), -RESIDUAL_MAX, RESIDUAL_MAX)


def _dense_requant(a: np.ndarray, w: np.ndarray, bias: np.ndarray, r: Requant) -> np.ndarray:
    return _apply(dense_gemm(a, w, bias), r)


def _plain_input(codes: np.ndarray, g: Gemm) -> tuple[np.ndarray, np.ndarray]:
    return _operand(codes, int(g.operand.zero_point[0])), g.bias


REFERENCE_OPS = Ops(operand=_operand, weight=lambda g: g.weight, plain_input=_plain_input, dense=dense_gemm,
                    dense_requant=_dense_requant,
                    log_shift=log_shift_gemm,
                    outliers=outlier_gemm, requant=_apply, add=_add, layernorm=nonlinear_reference.layernorm,
                    softmax=nonlinear_reference.softmax, gelu=nonlinear_reference.gelu)


def _zero_point(zp: np.ndarray, rows: int) -> "int | np.ndarray":
    """A per-tensor zero-point as an int, a per-token one as a column for `rows` rows."""
    return int(zp[0]) if zp.size == 1 else zp[np.arange(rows) % zp.size][:, None]


def _product(codes: np.ndarray, operand: Operand, w: np.ndarray, ops: Ops,
             outliers: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    """The accumulator of one GEMM by its operand format (`reference` fixes each sum); `bias` [N]
    goes into a plain dense accumulator, the caller adds any other bias."""
    if isinstance(operand, LogOperand):
        return ops.log_shift(codes.astype(np.uint8), w, operand.frac_bits, operand.base, operand.zero_code)
    if isinstance(operand, TwinOperand):
        coarse, fine = twin_levels(codes, operand.mode, operand.half)
        return (ops.dense(coarse, w).astype(np.int64) << operand.shift) + ops.dense(fine, w)
    a = ops.operand(codes, _zero_point(operand.zero_point, codes.shape[-2]))
    if operand.outlier_shift < 0:
        return ops.dense(a, w, bias)
    rows, cols = np.nonzero(outliers)
    sparse = ops.outliers(rows, cols, outliers[rows, cols], w, len(a))
    return (ops.dense(a, w).astype(np.int64) << operand.outlier_shift) + sparse


def _plain(g: Gemm) -> bool:
    """A single dense int32 sum with a per-channel bias (no outliers, no second range, no saturation)."""
    return not g.saturated and g.bias.ndim == 1 and isinstance(g.operand, UniformOperand)


def _linear(codes: np.ndarray, g: Gemm, ops: Ops, outliers: np.ndarray | None = None) -> np.ndarray:
    """A weight layer's accumulator: the product plus its bias, saturated where the program says so."""
    if _plain(g):
        a, bias = ops.plain_input(codes, g)
        return ops.dense(a, ops.weight(g), bias)
    acc = _product(codes, g.operand, ops.weight(g), ops, outliers)
    bias = g.bias if g.bias.ndim == 1 else g.bias[np.arange(len(acc)) % len(g.bias)]
    acc = acc + bias
    return saturate(acc) if g.saturated else acc


def _linear_codes(codes: np.ndarray, g: Gemm, parts: list[tuple[slice, Requant]], ops: Ops,
                  outliers: np.ndarray | None = None) -> list[np.ndarray]:
    """The codes of column slices of a weight layer's output, each by its own rule (qkv -> q, k, v):
    fused GEMM + requantization per slice where the sum is plain, else one accumulator, then the rules."""
    if _plain(g) and not any(r.offset.any() for _, r in parts):  # the fused kernel has no offset
        (a, bias), w = ops.plain_input(codes, g), ops.weight(g)
        return [ops.dense_requant(a, w[cols], bias[cols], r) for cols, r in parts]
    acc = _linear(codes, g, ops, outliers)
    return [ops.requant(acc[:, cols], r) for cols, r in parts]


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
    x, x_outliers = ops.layernorm(rows.astype(np.int32, copy=False), blk.norm1)
    q, k, v = _linear_codes(x, blk.qkv, [(slice(j * d, (j + 1) * d), rq) for j, rq in
                                         enumerate((blk.to_q, blk.to_k, blk.to_v))], ops, x_outliers)

    def split(a: np.ndarray) -> np.ndarray:  # [B*T, D] -> [B*H, T, hd]
        return a.reshape(b, t, heads, hd).transpose(0, 2, 1, 3).reshape(b * heads, t, hd)

    scores = _product(split(q), blk.qk.operand, split(ops.operand(k, blk.qk.b_zero_point)), ops)
    probs = ops.softmax(scores.reshape(-1, t).astype(np.int32, copy=False), blk.softmax)
    vt = split(ops.operand(v, blk.pv.b_zero_point)).transpose(0, 2, 1)
    pv = _product(probs.reshape(b * heads, t, t), blk.pv.operand, vt, ops)
    pv = saturate(pv) if blk.pv.saturated else pv
    pin = ops.requant(pv.reshape(b, heads, t, hd).transpose(0, 2, 1, 3).reshape(b * t, d), blk.to_proj_in)
    mid = ops.add(rows, blk.res_to_mid, _linear(pin, blk.proj, ops), blk.attn_to_res)
    y, y_outliers = ops.layernorm(mid.astype(np.int32, copy=False), blk.norm2)
    (fc1,) = _linear_codes(y, blk.fc1, [(slice(None), blk.to_gelu)], ops, y_outliers)
    g = ops.gelu(fc1.astype(np.int32, copy=False), blk.gelu)
    out = ops.add(mid, blk.mid_to_out, _linear(g, blk.fc2, ops), blk.mlp_to_res)
    traced = [("qkv_in", x), ("qkv_in_outliers", x_outliers), ("q", q), ("k", k), ("v", v), ("probs", probs),
              ("proj_in", pin), ("residual_mid", mid), ("fc1_in", y), ("fc1_in_outliers", y_outliers),
              ("fc2_in", g), ("residual_out", out)]
    for name, codes in traced:
        if codes is not None:
            trace[f"blocks.{i}.{name}"] = codes.reshape(b, -1)
    return out.reshape(b, t, d)


def _run_chunk(p: IntegerProgram, images: np.ndarray, ops: Ops) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    trace: dict[str, np.ndarray] = {}
    codes = _image_codes(images, p)
    trace["embed_in"] = codes.reshape(len(codes), -1)
    patches = _patches(codes, p.patch)
    b, n, kdim = patches.shape
    (emb,) = _linear_codes(patches.reshape(b * n, kdim), p.embed, [(slice(None), p.embed_to_res)], ops)
    emb = emb.reshape(b, n, -1)
    emb = np.clip(emb + p.pos_codes, -RESIDUAL_MAX, RESIDUAL_MAX)
    r = np.concatenate([np.broadcast_to(p.cls_code.astype(emb.dtype), (b, 1, emb.shape[2])), emb], axis=1)
    trace["residual_in"] = r.reshape(b, -1)
    for i, blk in enumerate(p.blocks):
        r = _block(r, blk, ops, trace, i)
    head_in, _ = ops.layernorm(r[:, 0].astype(np.int32), p.norm)  # token pooling: the class token alone
    trace["head_in"] = head_in
    logits = _linear(head_in, p.head, ops).astype(np.float64) * p.logit_scale
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
