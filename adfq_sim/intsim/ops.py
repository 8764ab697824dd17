"""The ops of an IntegerProgram: each names its input and output tensors and holds its constants.

A program is a list of these in execution order (`program.IntegerProgram.ops`). The executors, the op
listing, verification and the cost model's workload all walk that list, so a model family is data that
export emits, not code each reader restates. Tensors are 2-D per image, [rows, cols], held as
[images * rows, cols] int32 arrays between ops; their formats are `formats.FORMATS` entries
(`TensorInfo`).

Semantics every executor implements (the arithmetic rules themselves live in `dyadic`, `reference` and
`nonlinear_reference`):
- ImageInput: float images [B, C, H, W] -> uniform codes, flattened per image (the contract's only float
  input: the fake-quant input quantizer's float32 rule).
- Patchify: image codes -> [tokens, C * p * p] rows of non-overlapping p x p patches, tokens row-major,
  features in the convolution weight's order.
- Linear: a weight layer's accumulator (by its operand's format, `formats`), its columns cut into
  slices, each requantized by its rule to codes, or kept as the accumulator (rule None).
- AttentionScores: per window of `tokens` rows and head, Q . K^T, plus a score bias [heads, T, T] on
  the accumulator's grid (Swin's relative position bias) and a window mask [windows, T, T] (True:
  masked) that sets a score to -SOFTMAX_INPUT_MAX, where the integer softmax's exp is exactly 0.
  Rows out: [windows, heads, T] per image, T scores each.
- AttentionMix: per window and head, probs . V; out: the accumulators with heads merged, [rows, D].
- Softmax, Gelu, LayerNorm, QuantizeTokens: the integer non-linear ops (`nonlinear_reference`);
  LayerNorm emits codes (with PPOQ's outlier matrix) or, with `codes` None, its int32 acc.
- Requantize, ResidualAdd: the dyadic rule; an add rescales both operands and clamps to the residual range.
- Gather: out row t of an image concatenates input rows index[t, :] (-1: a row of zeros), the window
  partition / reverse, cyclic shift, padding and patch merging of Swin, ViT's class-token pooling.
- AddPositions: prefix rows (class token) then input + position codes, clamped to the residual range.
- MeanPool: the mean of an image's rows: an int64 sum, a rounding right shift by pre_shift (into int32),
  then the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from adfq_sim.formats import Operand, UniformOperand
from adfq_sim.intsim.nonlinear_reference import (GeluConstants, LayerNormConstants, LogOutput, SoftmaxConstants,
                                                 StepOutput, TokenCodes)


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """One tensor of a program: its format (a `formats.FORMATS` name), the bits it is stored and priced
    at, its shape per image, and whether verification compares it code for code."""

    name: str
    format: str
    bits: int
    rows: int
    cols: int
    verified: bool


@dataclass(frozen=True, eq=False)
class Requant:
    """codes = requantize(acc, m, s, lo - zero_point, hi - zero_point, offset) + zero_point.

    m, s: [1] per tensor, [N] per output channel, or [T, N] per token x channel (row r is token r % T);
    offset: int64 [1] or [N], the bias of a layer feeding the residual stream on the output scale with s
    fractional bits (its accumulator grid is too coarse for it at low bits), else 0.
    """

    m: np.ndarray
    s: np.ndarray
    zero_point: int
    lo: int
    hi: int
    offset: np.ndarray

    def describe(self) -> str:
        shape = "x".join(map(str, self.m.shape)) if self.m.size > 1 else "tensor"
        return (f"dyadic[{shape}] -> [{self.lo}, {self.hi}]" + (f" zp {self.zero_point}" if self.zero_point else "")
                + (" + bias" if self.offset.any() else ""))


@dataclass(frozen=True, eq=False)
class Gemm:
    """A weight layer: acc = operand(A) @ weight^T + bias, saturated to int32 where `saturated`."""

    weight: np.ndarray  # int32 [N, K]: weight codes minus their per-channel zero-points
    bias: np.ndarray  # int64 [N], or [T, N] per token, on the accumulator's scale
    operand: Operand
    acc_max: int  # proven |int32 accumulator| (the dense / each range's part where the sum is saturated)
    saturated: bool

    def describe(self) -> str:
        n, k = self.weight.shape
        top = int(max(-self.weight.min(initial=0), self.weight.max(initial=0)))
        bias = "per-token bias" if self.bias.ndim == 2 else "bias"
        acc = f"|acc| <= {self.acc_max}" + (", saturated" if self.saturated else "")
        return (f"gemm {k}->{n}: {self.operand.describe()}; int{max(2, top.bit_length() + 1)} weights, {bias}; "
                f"{acc}")


@dataclass(frozen=True, eq=False)
class ImageInput:
    name: str
    output: str
    channels: int
    height: int
    width: int
    scale: float
    zero_point: int
    qmax: int

    def describe(self) -> str:
        return (f"{self.channels}x{self.height}x{self.width} image -> uniform codes (scale {self.scale:.6g}, "
                f"zp {self.zero_point}, max {self.qmax})")


@dataclass(frozen=True, eq=False)
class Patchify:
    name: str
    input: str
    output: str
    channels: int
    height: int
    width: int
    patch: int

    def describe(self) -> str:
        return f"{self.patch}x{self.patch} patches of the image codes"


@dataclass(frozen=True, eq=False)
class Slice:
    """Columns [start, stop) of a Linear's accumulator -> `output`: codes by `rule`, or the accumulator."""

    output: str
    start: int
    stop: int
    rule: Optional[Requant]


@dataclass(frozen=True, eq=False)
class Linear:
    """A weight layer. requant_name: the vector op the cost model prices the slices' rules as ("" where
    the consumer's op includes them, as GELU's table does for fc1)."""

    name: str
    input: str
    outliers: Optional[str]
    gemm: Gemm
    outputs: list[Slice]
    requant_name: str

    def describe(self) -> str:
        rules = "; ".join(f"{s.output} = {s.rule.describe() if s.rule else 'accumulator'}" for s in self.outputs)
        return f"{self.gemm.describe()}; {rules}"


@dataclass(frozen=True, eq=False)
class AttentionScores:
    name: str
    q: str
    k: str
    output: str
    operand: UniformOperand
    k_zero_point: int
    heads: int
    tokens: int
    acc_max: int  # proven |Q.K^T + bias|, at most SOFTMAX_INPUT_MAX
    bias: Optional[np.ndarray]  # int32 [heads, T, T] on the score grid
    mask: Optional[np.ndarray]  # bool [windows, T, T]: True is masked

    @property
    def bias_name(self) -> str:
        """The vector op pricing the bias add and the mask."""
        return f"{self.name}_bias"

    def describe(self) -> str:
        extra = (" + relative position bias" if self.bias is not None else "") + (
            f", {self.mask.shape[0]} window masks" if self.mask is not None else "")
        return (f"Q.K^T x {self.heads} heads of {self.tokens} tokens: {self.operand.describe()}{extra}; "
                f"|acc| <= {self.acc_max}")


@dataclass(frozen=True, eq=False)
class AttentionMix:
    name: str
    probs: str
    v: str
    output: str
    operand: Operand
    v_zero_point: int
    heads: int
    tokens: int
    acc_max: int
    saturated: bool

    def describe(self) -> str:
        return (f"P.V x {self.heads} heads of {self.tokens} tokens: {self.operand.describe()}; |acc| <= "
                f"{self.acc_max}" + (", saturated" if self.saturated else ""))


@dataclass(frozen=True, eq=False)
class Softmax:
    name: str
    input: str
    output: str
    constants: SoftmaxConstants

    def describe(self) -> str:
        out = self.constants.out
        kind = "log (Q30 thresholds)" if isinstance(out, LogOutput) else (
            "step table (Q30)" if isinstance(out, StepOutput) else "uniform")
        return f"softmax: integer exp2 (Q30), one reciprocal per row -> {kind} codes"


@dataclass(frozen=True, eq=False)
class Requantize:
    name: str
    input: str
    output: str
    rule: Requant

    def describe(self) -> str:
        return self.rule.describe()


@dataclass(frozen=True, eq=False)
class ResidualAdd:
    name: str
    a: str
    b: str
    output: str
    rule_a: Requant
    rule_b: Requant

    def describe(self) -> str:
        return f"{self.a}: {self.rule_a.describe()} + {self.b}: {self.rule_b.describe()}"


def _codes_text(t: TokenCodes) -> str:
    out = f"{t.out.qmax.bit_length()}-bit codes" + (f" per token [{t.out.m.size}]" if t.out.m.size > 1 else "")
    return out + (f", outliers |acc| > {t.outlier_threshold} -> int16" if t.has_outliers else "")


@dataclass(frozen=True, eq=False)
class LayerNorm:
    name: str
    input: str
    output: str
    outlier_output: Optional[str]  # PPOQ's outlier matrix (with `codes` that have outliers)
    constants: LayerNormConstants
    codes: Optional[TokenCodes]  # None: the output is the int32 acc with acc_frac fractional bits

    def describe(self) -> str:
        c = self.constants
        out = _codes_text(self.codes) if self.codes is not None else f"int32 acc, {c.acc_frac} fraction bits"
        return f"layernorm C={c.channels}, isqrt, F={c.frac_bits} -> {out}"


@dataclass(frozen=True, eq=False)
class QuantizeTokens:
    name: str
    input: str
    output: str
    outlier_output: Optional[str]
    codes: TokenCodes

    def describe(self) -> str:
        return f"acc -> {_codes_text(self.codes)}"


@dataclass(frozen=True, eq=False)
class Gelu:
    name: str
    input: str
    output: str
    constants: GeluConstants

    def describe(self) -> str:
        c = self.constants
        return (f"step table, {c.thresholds.size} breakpoints -> codes [{int(c.codes.min())}, "
                f"{int(c.codes.max())}]")


@dataclass(frozen=True, eq=False)
class Gather:
    name: str
    input: str
    output: str
    index: np.ndarray  # int64 [rows out, k]: input rows concatenated per output row, -1 a row of zeros

    def describe(self) -> str:
        pads = int((self.index < 0).sum())
        return (f"gather {self.index.shape[0]} rows of {self.index.shape[1]} input row(s)"
                + (f", {pads} zero rows" if pads else ""))


@dataclass(frozen=True, eq=False)
class AddPositions:
    name: str
    input: str
    output: str
    prefix: np.ndarray  # int32 [P, D]: rows put before the input (class token + its position)
    positions: np.ndarray  # int32 [rows, D]: added to the input rows

    def describe(self) -> str:
        return f"{len(self.prefix)} prefix row(s) + input + position codes, clamped to the residual range"


@dataclass(frozen=True, eq=False)
class MeanPool:
    name: str
    input: str
    output: str
    pre_shift: int
    rule: Requant

    def describe(self) -> str:
        return f"mean over rows: int64 sum >> {self.pre_shift}, then {self.rule.describe()}"


Op = Union[ImageInput, Patchify, Linear, AttentionScores, AttentionMix, Softmax, Requantize, ResidualAdd,
           LayerNorm, QuantizeTokens, Gelu, Gather, AddPositions, MeanPool]
OP_TYPES = (ImageInput, Patchify, Linear, AttentionScores, AttentionMix, Softmax, Requantize, ResidualAdd,
            LayerNorm, QuantizeTokens, Gelu, Gather, AddPositions, MeanPool)
_INPUT_FIELDS = ("input", "q", "k", "probs", "v", "a", "b", "outliers")


def op_inputs(op: Op) -> list[str]:
    """The tensors an op reads (a Linear's outlier matrix included)."""
    return [getattr(op, f) for f in _INPUT_FIELDS if getattr(op, f, None) is not None]


def op_outputs(op: Op) -> list[str]:
    """The tensors an op writes, in the order it writes them."""
    if isinstance(op, Linear):
        return [s.output for s in op.outputs]
    return [op.output] + ([op.outlier_output] if getattr(op, "outlier_output", None) is not None else [])
