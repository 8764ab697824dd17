"""Run an IntegerProgram with the slow int64 NumPy ops of `reference` and `nonlinear_reference`.

The obviously-correct executor: integers only from the quantized image to the head accumulator.
Floats appear twice, as the contract allows: quantizing the input image (the same float32 rule as
the fake-quant input quantizer, so its codes agree) and scaling the head accumulator into logits.
Images run in chunks of CHUNK because GELU's reference step function compares every accumulator with
every threshold at once.

The op handlers (`run_program` walks the program's ops and calls one per op) take their arithmetic from
an `Ops` table, so that the fast simulator (`execute`) runs these very handlers with its Numba kernels
instead of restating them: the two executors can differ only in their kernels, which have their own
equality tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from adfq_sim.formats import RESIDUAL_MAX, LogOperand, Operand, OutlierOperand, TwinOperand, UniformOperand
from adfq_sim.intsim import nonlinear_reference
from adfq_sim.intsim.dyadic import requantize
from adfq_sim.intsim.nonlinear_reference import SOFTMAX_INPUT_MAX
from adfq_sim.intsim.ops import (AddPositions, AttentionMix, AttentionScores, Gather, Gelu, Gemm, ImageInput,
                                 LayerNorm, Linear, MeanPool, Op, Patchify, QuantizeTokens, Requant, Requantize,
                                 ResidualAdd, Softmax, op_inputs, op_outputs)
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.intsim.reference import dense_gemm, log_shift_gemm, outlier_gemm, saturate, twin_levels

CHUNK = 8
Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class Ops:
    """The integer arithmetic an executor plugs into the shared op handlers.

    operand(codes, zp): GEMM operand codes - zp (zp an int or a per-row column), in the storage dtype.
    weight(gemm): the layer's weight operand W [N, K] in the executor's storage.
    plain_input(codes, gemm): (A, bias) of a plain layer (`_plain`) with A @ W^T + bias equal to
      (codes - zero_point) @ W^T + gemm.bias; the simulator keeps the codes and folds the zero-point
      into the bias.
    dense(a, w, bias): A @ W^T (+ int32 bias [N]), A [(G,) M, K], W [N, K] or [G, N, K].
    dense_requant(a, w, bias, r): requant(dense(a, w, bias), r) (fused in the simulator).
    log_shift(p, b, e, base, zero_code): log codes P (integers) times B^T by shifts (`reference`).
    outlier_sum(a, g, outliers): PPOQ's accumulator of Gemm g (`outlier_sum` below): (A @ W^T << shift) + the
      outliers' products (outliers [M, K]: the LayerNorm's int16 outlier codes, 0 elsewhere) + g's bias,
      saturated if g is; the simulator fuses it into one kernel.
    outlier_requant(a, g, outliers, rules): per (start, stop, r) of `rules`, the codes of columns
      [start, stop) of outlier_sum(a, g, outliers) by r (fused in the simulator; r without offset).
    requant(acc, r): the dyadic rule of `r` to codes.
    add(a, ra, b, rb): residual add, both operands requantized, the sum clamped to the residual range.
    layernorm(x, c, t), layernorm_acc(x, c), token_codes(acc, t), softmax, gelu: the integer non-linear ops.
    gather(x, index): rows of x [L, C] (-1: zeros) concatenated per output row, for [B, L, C] inputs.
    scores(acc, heads, bias, mask): attention score rows from Q.K^T accumulators [B * W * H, T, T]
      (`score_rows`).
    """

    operand: Callable[[np.ndarray, "int | np.ndarray"], np.ndarray]
    weight: Callable[[Gemm], np.ndarray]
    plain_input: Callable[[np.ndarray, Gemm], tuple[np.ndarray, np.ndarray]]
    dense: Callable[..., np.ndarray]
    dense_requant: Callable[..., np.ndarray]
    log_shift: Callable[..., np.ndarray]
    outlier_sum: Callable[..., np.ndarray]
    outlier_requant: Callable[..., np.ndarray]
    requant: Callable[[np.ndarray, Requant], np.ndarray]
    add: Callable[[np.ndarray, Requant, np.ndarray, Requant], np.ndarray]
    layernorm: Callable
    layernorm_acc: Callable
    token_codes: Callable
    softmax: Callable
    gelu: Callable
    gather: Callable[[np.ndarray, np.ndarray], np.ndarray]
    scores: Callable[[np.ndarray, int, "np.ndarray | None", "np.ndarray | None"], np.ndarray]


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


def gather_rows(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """x [B, L, C] -> [B, rows, k * C]: input rows index[t] side by side, a row of zeros for -1."""
    padded = np.concatenate([x, np.zeros((x.shape[0], 1, x.shape[2]), x.dtype)], axis=1)
    rows = np.where(index < 0, x.shape[1], index)
    return padded[:, rows].reshape(x.shape[0], index.shape[0], -1)


def score_rows(scores: np.ndarray, heads: int, bias: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray:
    """Q.K^T accumulators [B * W * H, T, T] + the score bias [H, T, T], masked scores (mask [W, T, T]) at
    -SOFTMAX_INPUT_MAX, as int32 rows [B * W * H * T, T]."""
    t = scores.shape[-1]
    if bias is not None:
        scores = scores.reshape(-1, heads, t, t) + bias
    if mask is not None:
        scores = np.where(mask[None, :, None], -SOFTMAX_INPUT_MAX, scores.reshape(-1, mask.shape[0], heads, t, t))
    return scores.reshape(-1, t).astype(np.int32, copy=False)


def outlier_sum(a: np.ndarray, w: np.ndarray, shift: int, outliers: np.ndarray, bias: np.ndarray,
                saturated: bool) -> np.ndarray:
    """PPOQ's accumulator (`reference`'s sparse outlier path) plus its bias [T, N] (row r takes row r % T), int64."""
    rows, cols = np.nonzero(outliers)
    acc = (dense_gemm(a, w) << shift) + outlier_gemm(rows, cols, outliers[rows, cols], w, len(a))
    acc += bias[np.arange(len(acc)) % len(bias)]
    return saturate(acc) if saturated else acc


def _outlier_sum(a: np.ndarray, g: Gemm, outliers: np.ndarray) -> np.ndarray:
    return outlier_sum(a, g.weight, g.operand.outlier_shift, outliers, np.atleast_2d(g.bias), g.saturated)


def _outlier_requant(a: np.ndarray, g: Gemm, outliers: np.ndarray, rules: list[tuple[int, int, Requant]]
                     ) -> list[np.ndarray]:
    acc = _outlier_sum(a, g, outliers)
    return [_apply(acc[:, start:stop], r) for start, stop, r in rules]


REFERENCE_OPS = Ops(operand=_operand, weight=lambda g: g.weight, plain_input=_plain_input, dense=dense_gemm,
                    dense_requant=_dense_requant, log_shift=log_shift_gemm, outlier_sum=_outlier_sum,
                    outlier_requant=_outlier_requant, requant=_apply,
                    add=_add, layernorm=nonlinear_reference.layernorm,
                    layernorm_acc=nonlinear_reference.layernorm_acc, token_codes=nonlinear_reference.token_codes,
                    softmax=nonlinear_reference.softmax, gelu=nonlinear_reference.gelu, gather=gather_rows,
                    scores=score_rows)


# ------------------------------------------------------------------------------------ GEMM operands


def _zero_point(zp: np.ndarray, rows: int) -> "int | np.ndarray":
    """A per-tensor zero-point as an int, a per-token one as a column for `rows` rows."""
    return int(zp[0]) if zp.size == 1 else zp[np.arange(rows) % zp.size][:, None]


def _uniform_product(codes, operand: UniformOperand, w, ops: Ops, outliers, bias):
    return ops.dense(ops.operand(codes, _zero_point(operand.zero_point, codes.shape[-2])), w, bias)


def _log_product(codes, operand: LogOperand, w, ops: Ops, outliers, bias):
    return ops.log_shift(codes, w, operand.frac_bits, operand.base, operand.zero_code, bias)


def _twin_product(codes, operand: TwinOperand, w, ops: Ops, outliers, bias):
    coarse, fine = twin_levels(codes, operand.mode, operand.half)
    return (ops.dense(coarse, w).astype(np.int64) << operand.shift) + ops.dense(fine, w)


# One accumulation per operand form (`formats`): a new format adds its rule here (PPOQ's, with its bias
# and saturation, is `_accumulate`'s own).
PRODUCTS: dict[type, Callable[..., np.ndarray]] = {UniformOperand: _uniform_product, LogOperand: _log_product,
                                                   TwinOperand: _twin_product}


def _product(codes: np.ndarray, operand: Operand, w: np.ndarray, ops: Ops, outliers: np.ndarray | None = None,
             bias: np.ndarray | None = None) -> np.ndarray:
    """The accumulator of one GEMM by its operand's format; `bias` [N] goes into a plain dense or a
    log-shift accumulator only (the caller adds any other bias)."""
    return PRODUCTS[type(operand)](codes, operand, w, ops, outliers, bias)


def _plain(g: Gemm) -> bool:
    """A single dense int32 sum with a per-channel bias (no outliers, no second range, no saturation)."""
    return not g.saturated and g.bias.ndim == 1 and isinstance(g.operand, UniformOperand)


def _outlier_operand(codes: np.ndarray, g: Gemm, ops: Ops) -> np.ndarray:
    """PPOQ's dense operand: the codes minus the token's zero-point."""
    return ops.operand(codes, _zero_point(g.operand.zero_point, codes.shape[-2]))


def _accumulate(codes: np.ndarray, g: Gemm, ops: Ops, outliers: np.ndarray | None) -> np.ndarray:
    """A weight layer's accumulator: the product plus its bias, saturated where the program says so."""
    if _plain(g):
        a, bias = ops.plain_input(codes, g)
        return ops.dense(a, ops.weight(g), bias)
    if isinstance(g.operand, OutlierOperand):  # PPOQ: dense, sparse, bias and saturation in one op
        return ops.outlier_sum(_outlier_operand(codes, g, ops), g, outliers)
    if isinstance(g.operand, LogOperand) and not g.saturated and g.bias.ndim == 1:  # export proved the sum
        return _product(codes, g.operand, ops.weight(g), ops, outliers, g.bias)    # with its bias in int32
    acc = _product(codes, g.operand, ops.weight(g), ops, outliers)
    bias = g.bias if g.bias.ndim == 1 else g.bias[np.arange(len(acc)) % len(g.bias)]
    acc = acc + bias
    return saturate(acc) if g.saturated else acc


# ------------------------------------------------------------------------------------------ handlers


def _image(op: ImageInput, t: Tensors, ops: Ops, b: int) -> None:
    """UniformQuantizer's rule in float32: round_half_up(clamp(x / scale + zp, 0, qmax))."""
    x = t.pop("image").astype(np.float32) / np.float32(op.scale) + np.float32(op.zero_point)
    t[op.output] = np.floor(np.clip(x, 0, op.qmax) + np.float32(0.5)).astype(np.int64).reshape(b, -1)


def patches(codes: np.ndarray, op: Patchify) -> np.ndarray:
    """[B, C * H * W] -> [B * T, C * p * p], tokens row-major, features in the conv weight's order."""
    p = op.patch
    x = codes.reshape(-1, op.channels, op.height // p, p, op.width // p, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, op.channels * p * p)


def _patchify(op: Patchify, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output] = patches(t[op.input], op)


def _linear(op: Linear, t: Tensors, ops: Ops, b: int) -> None:
    """Fused GEMM + requantization per slice where the sum is plain or PPOQ's, else one accumulator, then the
    rules."""
    g, codes = op.gemm, t[op.input]
    fused = all(s.rule is not None and not s.rule.offset.any() for s in op.outputs)  # fused kernels: no offset
    if _plain(g) and fused:
        (a, bias), w = ops.plain_input(codes, g), ops.weight(g)
        for s in op.outputs:
            t[s.output] = ops.dense_requant(a, w[s.start:s.stop], bias[s.start:s.stop], s.rule)
        return
    if isinstance(g.operand, OutlierOperand) and fused:
        codes_out = ops.outlier_requant(_outlier_operand(codes, g, ops), g, t[op.outliers],
                                        [(s.start, s.stop, s.rule) for s in op.outputs])
        for s, part in zip(op.outputs, codes_out):
            t[s.output] = part
        return
    acc = _accumulate(codes, g, ops, t.get(op.outliers) if op.outliers else None)
    for s in op.outputs:
        part = acc[:, s.start:s.stop]
        t[s.output] = part if s.rule is None else ops.requant(part, s.rule)


def split_heads(x: np.ndarray, heads: int, tokens: int) -> np.ndarray:
    """[B * W * T, H * hd] -> [B * W * H, T, hd]: one group per window and head."""
    return x.reshape(-1, tokens, heads, x.shape[1] // heads).transpose(0, 2, 1, 3).reshape(-1, tokens,
                                                                                            x.shape[1] // heads)


def merge_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B * W * H, T, hd] -> [B * W * T, H * hd]."""
    groups, tokens, hd = x.shape
    return x.reshape(groups // heads, heads, tokens, hd).transpose(0, 2, 1, 3).reshape(-1, heads * hd)


def _scores(op: AttentionScores, t: Tensors, ops: Ops, b: int) -> None:
    q = split_heads(t[op.q], op.heads, op.tokens)
    k = split_heads(ops.operand(t[op.k], op.k_zero_point), op.heads, op.tokens)
    t[op.output] = ops.scores(_product(q, op.operand, k, ops), op.heads, op.bias, op.mask)


def _softmax(op: Softmax, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output] = ops.softmax(t[op.input], op.constants)


def _mix(op: AttentionMix, t: Tensors, ops: Ops, b: int) -> None:
    v = split_heads(ops.operand(t[op.v], op.v_zero_point), op.heads, op.tokens).transpose(0, 2, 1)
    probs = t[op.probs].reshape(-1, op.tokens, op.tokens)
    acc = _product(probs, op.operand, v, ops)
    t[op.output] = merge_heads(saturate(acc) if op.saturated else acc, op.heads)


def _requantize(op: Requantize, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output] = ops.requant(t[op.input], op.rule)


def _residual_add(op: ResidualAdd, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output] = ops.add(t[op.a], op.rule_a, t[op.b], op.rule_b)


def _layernorm(op: LayerNorm, t: Tensors, ops: Ops, b: int) -> None:
    x = t[op.input].astype(np.int32, copy=False)
    if op.codes is None:
        t[op.output] = ops.layernorm_acc(x, op.constants).astype(np.int32, copy=False)
        return
    t[op.output], outliers = ops.layernorm(x, op.constants, op.codes)
    if op.outlier_output is not None:
        t[op.outlier_output] = outliers


def _quantize_tokens(op: QuantizeTokens, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output], outliers = ops.token_codes(t[op.input].astype(np.int32, copy=False), op.codes)
    if op.outlier_output is not None:
        t[op.outlier_output] = outliers


def _gelu(op: Gelu, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output] = ops.gelu(t[op.input].astype(np.int32, copy=False), op.constants)


def _gather(op: Gather, t: Tensors, ops: Ops, b: int) -> None:
    x = t[op.input]
    t[op.output] = ops.gather(x.reshape(b, -1, x.shape[1]), op.index).reshape(-1, op.index.shape[1] * x.shape[1])


def _add_positions(op: AddPositions, t: Tensors, ops: Ops, b: int) -> None:
    x = t[op.input]
    x = np.clip(x.reshape(b, -1, x.shape[1]) + op.positions, -RESIDUAL_MAX, RESIDUAL_MAX)
    prefix = np.broadcast_to(op.prefix.astype(x.dtype), (b, *op.prefix.shape))
    t[op.output] = np.concatenate([prefix, x], axis=1).reshape(-1, x.shape[2])


def pool_sums(acc: np.ndarray, images: int, pre_shift: int) -> np.ndarray:
    """Per image the int64 sum of its rows, shifted right by pre_shift rounding half up: [B, C]."""
    total = acc.reshape(images, -1, acc.shape[1]).astype(np.int64).sum(axis=1)
    return total if pre_shift == 0 else (total + (np.int64(1) << (pre_shift - 1))) >> pre_shift


def _mean_pool(op: MeanPool, t: Tensors, ops: Ops, b: int) -> None:
    t[op.output] = ops.requant(pool_sums(t[op.input], b, op.pre_shift), op.rule)


HANDLERS: dict[type, Callable[[Op, Tensors, Ops, int], None]] = {
    ImageInput: _image, Patchify: _patchify, Linear: _linear, AttentionScores: _scores, Softmax: _softmax,
    AttentionMix: _mix, Requantize: _requantize, ResidualAdd: _residual_add, LayerNorm: _layernorm,
    QuantizeTokens: _quantize_tokens, Gelu: _gelu, Gather: _gather, AddPositions: _add_positions,
    MeanPool: _mean_pool}


def last_uses(program: IntegerProgram) -> list[list[str]]:
    """Per op, the tensors no later op reads (freed after it): a chunk holds only live tensors."""
    last: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        for name in op_inputs(op) + op_outputs(op):
            last[name] = i
    frees: list[list[str]] = [[] for _ in program.ops]
    for name, i in last.items():
        if name != program.logits:
            frees[i].append(name)
    return frees


def _run_chunk(p: IntegerProgram, images: np.ndarray, ops: Ops, frees: list[list[str]]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    b = len(images)
    tensors: Tensors = {"image": images}
    trace: dict[str, np.ndarray] = {}
    for op, free in zip(p.ops, frees):
        HANDLERS[type(op)](op, tensors, ops, b)
        for name in op_outputs(op):
            if p.tensor(name).verified:
                trace[name] = tensors[name].reshape(b, -1)
        for name in free:
            tensors.pop(name, None)
    return tensors[p.logits].astype(np.float64) * p.logit_scale, trace


def run_program(program: IntegerProgram, images: np.ndarray | torch.Tensor, ops: Ops, chunk: int
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The program's ops with `ops`, `chunk` images at a time: logits and the codes of every verified
    tensor, [B, ...] each."""
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    frees = last_uses(program)
    parts = [_run_chunk(program, images[i:i + chunk], ops, frees) for i in range(0, len(images), chunk)]
    if len(parts) == 1:  # one chunk: no copy (concatenating every traced tensor costs a GEMM's time)
        return parts[0]
    trace = {key: np.concatenate([t[key] for _, t in parts]) for key in parts[0][1]}
    return np.concatenate([logits for logits, _ in parts]), trace


def run_reference(program: IntegerProgram, images: np.ndarray | torch.Tensor
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits [B, classes] (float64) and the integer codes of every verified tensor, [B, ...] each."""
    return run_program(program, images, REFERENCE_OPS, CHUNK)
