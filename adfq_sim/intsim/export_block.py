"""The transformer block as integer ops, shared by every exported model family, and the program builder.

A ViT / DeiT block and a Swin block differ only in where attention looks: ViT attends over all of an
image's tokens, Swin within (shifted, padded) windows with a relative position bias and, when shifted,
a mask. `emit_block` writes one block's ops for either, given a `WindowLayout` (None: one window of
all tokens, no bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from torch import nn

from adfq_sim.formats import (ACCUMULATOR, OUTLIERS, RESIDUAL, RESIDUAL_BITS, OUTLIER_BITS, UniformOperand,
                              code_bits, quantizer_format)
from adfq_sim.intsim.export_layers import (activation_bound, check_saturation, gelu, gemm, layernorm, probs_operand,
                                           round_half_up, softmax_output, to_codes, to_residual, token_codes,
                                           uniform_tensor)
from adfq_sim.intsim.nonlinear_reference import (SOFTMAX_INPUT_MAX, LogOutput, StepOutput, TokenCodes,
                                                 softmax_constants)
from adfq_sim.intsim.ops import (AttentionMix, AttentionScores, Gather, Gelu, LayerNorm, Linear, Op, QuantizeTokens,
                                 Requantize, ResidualAdd, Slice, Softmax, TensorInfo)
from adfq_sim.intsim.program import IntegerProgram, UnsupportedProgramError


class Graph:
    """An IntegerProgram under construction: its tensors by name and its ops in execution order."""

    def __init__(self) -> None:
        self.tensors: dict[str, TensorInfo] = {}
        self.ops: list[Op] = []

    def tensor(self, name: str, fmt: str, bits: int, rows: int, cols: int, verified: bool = True) -> str:
        if name in self.tensors:
            raise ValueError(f"tensor {name!r} defined twice")
        self.tensors[name] = TensorInfo(name, fmt, bits, rows, cols, verified)
        return name

    def codes(self, name: str, form: dict, max_code: int, rows: int, cols: int, verified: bool = True) -> str:
        """A tensor of a quantizer's codes (format from its integer form), up to max_code."""
        return self.tensor(name, quantizer_format(form).name, code_bits(max_code), rows, cols, verified)

    def accumulator(self, name: str, rows: int, cols: int) -> str:
        return self.tensor(name, ACCUMULATOR.name, 32, rows, cols, verified=False)

    def residual(self, name: str, rows: int, cols: int, verified: bool = True) -> str:
        return self.tensor(name, RESIDUAL.name, RESIDUAL_BITS, rows, cols, verified)

    def outliers(self, name: str, codes: TokenCodes, rows: int, cols: int) -> Optional[str]:
        """PPOQ's outlier matrix beside `name`'s codes, where the codes have outliers."""
        if not codes.has_outliers:
            return None
        return self.tensor(f"{name}_outliers", OUTLIERS.name, OUTLIER_BITS, rows, cols)

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def program(self, model: str, logits: str, logit_scale: np.ndarray) -> IntegerProgram:
        return IntegerProgram(model, list(self.tensors.values()), self.ops, logits, logit_scale)


@dataclass(frozen=True)
class WindowLayout:
    """Where a Swin block's attention looks: image rows -> `windows` windows of `tokens` rows.

    partition [windows * tokens, 1]: the image row of each window row (-1: padding, a zero row);
    reverse [image rows, 1]: the window row each image row comes back from; mask [windows, T, T]:
    True where a query and a key come from different regions of a shifted window (None: not shifted);
    bias: the attention's relative position bias [heads, T, T] (float).
    """

    partition: np.ndarray
    reverse: np.ndarray
    windows: int
    tokens: int
    mask: Optional[np.ndarray]
    bias: np.ndarray

    @property
    def reorders(self) -> bool:
        """False where one unshifted window covers the image exactly: the rows stay where they are."""
        return not np.array_equal(self.partition[:, 0], np.arange(len(self.reverse)))


def _probs_bits(out) -> int:
    if isinstance(out, LogOutput):
        return code_bits(out.zero_code)
    if isinstance(out, StepOutput):
        return code_bits(int(out.codes.max()))
    return code_bits(out.qmax)


def _attention_input(g: Graph, name: str, norm1: nn.LayerNorm, attn: nn.Module, x: str, rows: int, s_in: float,
                     layout: WindowLayout | None) -> tuple[str, Optional[str], int]:
    """LayerNorm-1 into the qkv quantizer's codes, in window order for Swin: (codes, outliers, rows)."""
    dim = norm1.normalized_shape[0]
    c = layernorm(norm1, s_in)
    q = attn.qkv.act_q
    codes = token_codes(q, c.acc_frac, f"{name}.norm1")
    form = q.integer_form()
    if layout is None or not layout.reorders:
        qkv_in = g.codes(f"{name}.qkv_in", form, form["code_max"], rows, dim)
        outliers = g.outliers(qkv_in, codes, rows, dim)
        g.add(LayerNorm(f"{name}.norm1", x, qkv_in, outliers, c, codes))
        return qkv_in, outliers, rows
    window_rows = layout.windows * layout.tokens
    acc = g.accumulator(f"{name}.norm1_acc", rows, dim)
    g.add(LayerNorm(f"{name}.norm1", x, acc, None, c, None))
    windows = g.accumulator(f"{name}.windows", window_rows, dim)
    g.add(Gather(f"{name}.attn.partition", acc, windows, layout.partition))
    qkv_in = g.codes(f"{name}.qkv_in", form, form["code_max"], window_rows, dim)
    outliers = g.outliers(qkv_in, codes, window_rows, dim)
    g.add(QuantizeTokens(f"{name}.attn.to_qkv_in", windows, qkv_in, outliers, codes))
    return qkv_in, outliers, window_rows


def _scores(name: str, attn: nn.Module, layout: WindowLayout | None, tokens: int) -> tuple:
    """The score rule: (q, k and v (scale, zp, qmax), the proven |scores|, the integer bias, softmax)."""
    q, k, v = (uniform_tensor(getattr(attn, f"{t}_q"), f"{name}.attn.{t}_q") for t in "qkv")
    (s_q, zp_q, max_q), (s_k, zp_k, max_k) = q, k
    bound = activation_bound((-zp_q, max_q - zp_q), (-zp_k, max_k - zp_k), attn.head_dim, f"{name}.attn.qk")
    score_scale = s_q * s_k * attn.scale
    bias = None
    if layout is not None:  # the relative position bias on the score accumulator's grid
        bias = round_half_up(layout.bias / score_scale)
        if np.abs(bias).max() > SOFTMAX_INPUT_MAX:
            raise UnsupportedProgramError(f"{name}.attn: the relative position bias exceeds the softmax input range")
        bias = bias.astype(np.int32)
        bound += int(np.abs(bias).max())
    if bound > SOFTMAX_INPUT_MAX:
        raise UnsupportedProgramError(f"{name}.attn.qk: |Q.K^T| could reach {bound}, above {SOFTMAX_INPUT_MAX}")
    softmax = softmax_constants(score_scale, softmax_output(attn.probs_q))
    if layout is not None and layout.mask is not None and bound + softmax.a_max > SOFTMAX_INPUT_MAX:
        raise UnsupportedProgramError(f"{name}.attn: a masked score would not reach the softmax's zero")
    return q, k, v, bound, bias, softmax


def emit_block(g: Graph, blk: nn.Module, name: str, x: str, rows: int, scales: tuple[float, float, float],
               layout: WindowLayout | None = None) -> str:
    """One pre-norm transformer block (norm1 -> attention -> add -> norm2 -> MLP -> add) on the residual
    tensor x of `rows` rows per image at scales[0]; the mid and output residuals at scales[1], scales[2].
    Returns the output residual tensor."""
    s_in, s_mid, s_out = scales
    attn = blk.attn
    width = blk.norm1.normalized_shape[0]
    qkv_in, qkv_outliers, window_rows = _attention_input(g, name, blk.norm1, attn, x, rows, s_in, layout)
    tokens = rows if layout is None else layout.tokens
    windows = 1 if layout is None else layout.windows

    qkv, qkv_scale, _ = gemm(attn.qkv, f"{name}.attn.qkv", ("uniform-tensor", "ppoq"))
    dim = qkv.weight.shape[0] // 3
    (s_q, zp_q, _), (s_k, zp_k, _), (s_v, zp_v, max_v), score_max, bias, softmax = _scores(name, attn, layout, tokens)
    slices = []
    for j, (t, scale) in enumerate((("q", s_q), ("k", s_k), ("v", s_v))):
        quantizer = getattr(attn, f"{t}_q")
        rule = check_saturation(to_codes(qkv_scale[..., j * dim:(j + 1) * dim] / scale, quantizer, t), qkv.saturated,
                                f"{name}.{t}")
        out = g.codes(f"{name}.{t}", quantizer.integer_form(), rule.hi, window_rows, dim)
        slices.append(Slice(out, j * dim, (j + 1) * dim, rule))
    g.add(Linear(f"{name}.attn.qkv", qkv_in, qkv_outliers, qkv, slices, f"{name}.attn.to_qkv"))
    q, k, v = (s.output for s in slices)

    scores = g.accumulator(f"{name}.scores", windows * attn.num_heads * tokens, tokens)
    g.add(AttentionScores(f"{name}.attn.qk", q, k, scores, UniformOperand(np.array([zp_q], np.int64)), zp_k,
                          attn.num_heads, tokens, score_max, bias, None if layout is None else layout.mask))
    probs_form = attn.probs_q.integer_form()
    probs = g.tensor(f"{name}.probs", quantizer_format(probs_form).name, _probs_bits(softmax.out),
                     windows * attn.num_heads * tokens, tokens)
    g.add(Softmax(f"{name}.attn.softmax", scores, probs, softmax))
    operand, pv_max, saturated, pv_scale = probs_operand(attn.probs_q, (-zp_v, max_v - zp_v), tokens, f"{name}.attn")
    pv = g.accumulator(f"{name}.pv", window_rows, dim)
    g.add(AttentionMix(f"{name}.attn.pv", probs, v, pv, operand, zp_v, attn.num_heads, tokens, pv_max, saturated))
    s_pin, _, _ = uniform_tensor(attn.proj.act_q, f"{name}.attn.proj.act_q")
    to_proj_in = check_saturation(to_codes(pv_scale * s_v / s_pin, attn.proj.act_q, "proj_in"), saturated,
                                  f"{name}.attn.pv")
    proj_form = attn.proj.act_q.integer_form()
    proj_in = g.codes(f"{name}.proj_in", proj_form, to_proj_in.hi, window_rows, dim)
    g.add(Requantize(f"{name}.attn.to_proj_in", pv, proj_in, to_proj_in))
    if layout is not None and layout.reorders:  # back to image rows (padding dropped) before proj: row-wise
        image_rows = g.codes(f"{name}.proj_in_rows", proj_form, to_proj_in.hi, rows, dim, verified=False)
        g.add(Gather(f"{name}.attn.reverse", proj_in, image_rows, layout.reverse))
        proj_in = image_rows
    proj, proj_scale, proj_bias = gemm(attn.proj, f"{name}.attn.proj", ("uniform-tensor",), bias_out=True)
    proj_acc = g.accumulator(f"{name}.proj", rows, width)
    g.add(Linear(f"{name}.attn.proj", proj_in, None, proj, [Slice(proj_acc, 0, width, None)], ""))
    mid = g.residual(f"{name}.residual_mid", rows, width)
    g.add(ResidualAdd(f"{name}.residual1", x, proj_acc, mid, to_residual(s_in / s_mid),
                      to_residual(proj_scale / s_mid, proj_bias / s_mid)))
    return _mlp(g, blk, name, mid, rows, s_mid, s_out)


def _mlp(g: Graph, blk: nn.Module, name: str, mid: str, rows: int, s_mid: float, s_out: float) -> str:
    mlp, width = blk.mlp, blk.norm2.normalized_shape[0]
    c = layernorm(blk.norm2, s_mid)
    codes = token_codes(mlp.fc1.act_q, c.acc_frac, f"{name}.norm2")
    form = mlp.fc1.act_q.integer_form()
    fc1_in = g.codes(f"{name}.fc1_in", form, form["code_max"], rows, width)
    outliers = g.outliers(fc1_in, codes, rows, width)
    g.add(LayerNorm(f"{name}.norm2", mid, fc1_in, outliers, c, codes))
    fc1, fc1_scale, _ = gemm(mlp.fc1, f"{name}.mlp.fc1", ("uniform-tensor", "ppoq"))
    hidden = fc1.weight.shape[0]
    to_gelu, gelu_constants = gelu(fc1_scale, mlp.fc2.act_q, f"{name}.mlp")
    gelu_in = g.accumulator(f"{name}.gelu_in", rows, hidden)
    g.add(Linear(f"{name}.mlp.fc1", fc1_in, outliers, fc1, [Slice(gelu_in, 0, hidden, to_gelu)], ""))
    fc2_in = g.codes(f"{name}.fc2_in", mlp.fc2.act_q.integer_form(), int(gelu_constants.codes.max()), rows, hidden)
    g.add(Gelu(f"{name}.mlp.gelu", gelu_in, fc2_in, gelu_constants))
    fc2, fc2_scale, fc2_bias = gemm(mlp.fc2, f"{name}.mlp.fc2", ("uniform-tensor", "log", "twin"), bias_out=True)
    fc2_acc = g.accumulator(f"{name}.fc2", rows, width)
    g.add(Linear(f"{name}.mlp.fc2", fc2_in, None, fc2, [Slice(fc2_acc, 0, width, None)], ""))
    out = g.residual(f"{name}.residual_out", rows, width)
    g.add(ResidualAdd(f"{name}.residual2", mid, fc2_acc, out, to_residual(s_mid / s_out),
                      check_saturation(to_residual(fc2_scale / s_out, fc2_bias / s_out), fc2.saturated,
                                       f"{name}.mlp.fc2")))
    return out
