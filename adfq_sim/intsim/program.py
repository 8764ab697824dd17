"""IntegerProgram: every integer constant of a deployed ViT, its file format and its op listing.

The program is built by `export` from a calibrated QuantModel and read by the three executors
(`execute_reference`, `execute`, `faithful`). Its semantics, fixed once here and in the modules named:
- GEMM operands are codes read by an operand format (UniformOperand, LogOperand, TwinOperand); weights
  are codes minus their per-channel zero-points; a weight layer's bias lands on its accumulator's scale.
- Accumulators are int32. A dense GEMM's bound is proven at export (`bounds`). Where a GEMM sums
  parts on different steps (PPOQ's dense codes and sparse outliers, a twin-uniform operand's coarse and
  fine ranges) the parts are exact int32 / int64 sums, combined in int64 and *saturated* to
  +-(2**31 - 1) (`Gemm.saturated`, `reference.saturate`); export proves that saturation never changes the consumer's codes
  (a requantization whose output clamps before the int32 edge, a GELU table flat beyond it).
- Every rescale is a `Requant` (the dyadic rule of `dyadic.py`), per tensor, per output channel or per
  token x channel (PPOQ inputs), the zero-point added after the rule.
- Residual stream: signed RESIDUAL_BITS-bit codes (held in int32), one scale per residual point; adds
  rescale both operands. Why 20 bits, not 16: the stream's rounding was the last gap between the
  integer path and the fake-quant's float stream. On the demo with 16 bits it flipped 0.01-0.4 % of the
  post-LayerNorm codes, which the log-sqrt2 softmax amplifies: ADFQ's integer arg-max agreed with the
  fake-quant on 99.33-99.78 % of the images; with 20 bits on 100 % at W8A8, W6A6 and W4A4.
  (LayerNorm's int64 variance allows up to 22 bits for 768 channels.)
- Floats: the input image quantizer (images arrive in float) and the logit scales, nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from adfq_sim.intsim.nonlinear_reference import (GeluConstants, LayerNormConstants, LogOutput, SoftmaxConstants,
                                                 StepOutput, UniformOutput)

RESIDUAL_BITS = 20
RESIDUAL_MAX = (1 << (RESIDUAL_BITS - 1)) - 1
FILE_FORMAT = "adfq-sim integer program"
FILE_VERSION = 1


class UnsupportedProgramError(ValueError):
    """A QuantModel this exporter cannot express as an IntegerProgram."""


@dataclass(frozen=True, eq=False)
class UniformOperand:
    """codes - zero_point, zero_point [1] (per tensor) or [T] (per token position, PPOQ).

    outlier_shift >= 0 (PPOQ): the operand also has sparse int16 outliers on step / 2**outlier_shift;
    acc = (dense << outlier_shift) + outlier products + bias, saturated.
    """

    zero_point: np.ndarray
    outlier_shift: int = -1

    @property
    def format(self) -> str:
        return "ppoq" if self.outlier_shift >= 0 else "uniform"


@dataclass(frozen=True, eq=False)
class LogOperand:
    """Log codes (zero_code means zero) multiplied by shifting, E = frac_bits (`reference.log_shift_gemm`)."""

    base: str
    frac_bits: int
    zero_code: int

    @property
    def format(self) -> str:
        return f"log{self.base}"


@dataclass(frozen=True, eq=False)
class TwinOperand:
    """PTQ4ViT twin-uniform codes (mode softmax | gelu, `half` = 2**(b-1)): two operands of levels, one per
    range (`reference.twin_levels`), acc = (acc_coarse << shift) + acc_fine + bias, saturated."""

    mode: str
    half: int
    shift: int

    @property
    def format(self) -> str:
        return "twin"


Operand = Union[UniformOperand, LogOperand, TwinOperand]


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


@dataclass(frozen=True, eq=False)
class Gemm:
    """A weight layer: acc = operand(A) @ weight^T + bias (see UniformOperand / TwinOperand for the sums)."""

    weight: np.ndarray  # int32 [N, K]: weight codes minus their per-channel zero-points
    bias: np.ndarray  # int64 [N], or [T, N] per token, on the accumulator's scale
    operand: Operand
    acc_max: int  # proven |int32 accumulator| (the dense / each range's part where the sum is saturated)
    saturated: bool


@dataclass(frozen=True, eq=False)
class Matmul:
    """Two activation tensors: acc = operand(A) @ (B - b_zero_point)^T, per batch x head."""

    operand: Operand
    b_zero_point: int
    acc_max: int
    saturated: bool


@dataclass(frozen=True, eq=False)
class Block:
    norm1: LayerNormConstants
    qkv: Gemm
    to_q: Requant
    to_k: Requant
    to_v: Requant
    heads: int
    qk: Matmul  # Q . K^T (|acc| within the softmax input range)
    softmax: SoftmaxConstants
    pv: Matmul  # probs . V
    to_proj_in: Requant
    proj: Gemm
    attn_to_res: Requant  # proj accumulator -> mid residual codes
    res_to_mid: Requant  # input residual -> mid residual scale
    norm2: LayerNormConstants
    fc1: Gemm
    to_gelu: Requant  # fc1 accumulator -> one per-tensor scale (int32, clamped)
    gelu: GeluConstants
    fc2: Gemm
    mlp_to_res: Requant  # fc2 accumulator -> output residual codes
    mid_to_out: Requant  # mid residual -> output residual scale


@dataclass(frozen=True, eq=False)
class IntegerProgram:
    """The deployed model. Floats: the input quantizer (images arrive in float) and the logit scales."""

    image_scale: float
    image_zero_point: int
    image_qmax: int
    patch: int
    embed: Gemm
    embed_to_res: Requant
    cls_code: np.ndarray  # int32 [D]: (class token + pos[0]) at the first residual scale
    pos_codes: np.ndarray  # int32 [T - 1, D]: pos[1:] at the first residual scale
    blocks: list[Block]
    norm: LayerNormConstants
    head: Gemm
    logit_scale: np.ndarray  # float64 [classes]: s_in * s_w[n], used only to report logits

    @property
    def tokens(self) -> int:
        return len(self.pos_codes) + 1

    def tensor_formats(self) -> dict[str, str]:
        """Format of every traced tensor (the executors' codes keys), for the verification table."""
        formats = {"embed_in": self.embed.operand.format, "residual_in": f"int{RESIDUAL_BITS}"}
        for i, blk in enumerate(self.blocks):
            p = f"blocks.{i}."
            formats.update({p + "qkv_in": blk.qkv.operand.format, p + "q": "uniform", p + "k": "uniform",
                            p + "v": "uniform", p + "probs": blk.pv.operand.format,
                            p + "proj_in": blk.proj.operand.format, p + "residual_mid": f"int{RESIDUAL_BITS}",
                            p + "fc1_in": blk.fc1.operand.format, p + "fc2_in": blk.fc2.operand.format,
                            p + "residual_out": f"int{RESIDUAL_BITS}"})
            for name, gemm in (("qkv_in", blk.qkv), ("fc1_in", blk.fc1)):
                if gemm.operand.format == "ppoq":
                    formats[p + name + "_outliers"] = "int16 outliers"
        formats["head_in"] = self.head.operand.format
        return formats


# ------------------------------------------------------------------------------------- file format

_CLASSES = {cls.__name__: cls for cls in (IntegerProgram, Block, Gemm, Matmul, Requant, UniformOperand, LogOperand,
                                          TwinOperand, LayerNormConstants, SoftmaxConstants, GeluConstants,
                                          UniformOutput, LogOutput, StepOutput)}


def _encode(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {"__array__": path}
    if dataclasses.is_dataclass(value):
        fields = {f.name: _encode(getattr(value, f.name), arrays, f"{path}.{f.name}")
                  for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _decode(value: Any, arrays: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return arrays[value["__array__"]]
    cls = _CLASSES[value["__type__"]]
    return cls(**{k: _decode(v, arrays) for k, v in value.items() if k != "__type__"})


def save_program(program: IntegerProgram, path: str | Path) -> Path:
    """Write the program to one .npz file (arrays + a JSON structure; no pickle), atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    structure = {"format": FILE_FORMAT, "version": FILE_VERSION, "program": _encode(program, arrays, "p")}
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, __structure__=np.array(json.dumps(structure)), **arrays)
    tmp.replace(path)
    return path


def load_program(path: str | Path) -> IntegerProgram:
    """Read a program written by `save_program`; a file of another kind is refused by name."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            structure = json.loads(str(data["__structure__"]))
            arrays = {key: data[key] for key in data.files if key != "__structure__"}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not an integer program file ({exc})") from None
    if structure.get("format") != FILE_FORMAT or structure.get("version") != FILE_VERSION:
        raise ValueError(f"{path}: not an integer program file of version {FILE_VERSION}")
    return _decode(structure["program"], arrays)


# ------------------------------------------------------------------------------------------ listing


def _rule(r: Requant) -> str:
    shape = "x".join(map(str, r.m.shape)) if r.m.size > 1 else "tensor"
    return (f"dyadic[{shape}] -> [{r.lo}, {r.hi}]" + (f" zp {r.zero_point}" if r.zero_point else "")
            + (" + bias" if r.offset.any() else ""))


def _operand_text(op: Operand) -> str:
    if isinstance(op, LogOperand):
        return f"log{op.base} codes (zero code {op.zero_code}) by shifts, E={op.frac_bits}"
    if isinstance(op, TwinOperand):
        return f"twin-{op.mode} codes: coarse << {op.shift} + fine"
    zp = f"zp[{op.zero_point.size}]" if op.zero_point.size > 1 else f"zp {int(op.zero_point[0])}"
    if op.outlier_shift >= 0:
        return f"ppoq codes - {zp}, << {op.outlier_shift} + sparse int16 outliers"
    return f"uniform codes - {zp}"


def _gemm_text(name: str, g: Gemm) -> str:
    n, k = g.weight.shape
    bias = "per-token bias" if g.bias.ndim == 2 else "bias"
    acc = f"|acc| <= {g.acc_max}" + (", saturated" if g.saturated else "")
    return f"{name:<22} gemm {k}->{n}: {_operand_text(g.operand)}; int{_bits(g.weight)} weights, {bias}; {acc}"


def _bits(w: np.ndarray) -> int:
    top = int(max(-w.min(initial=0), w.max(initial=0)))
    return max(2, top.bit_length() + 1)


def _norm_text(name: str, c: LayerNormConstants) -> str:
    out = f"{c.out.qmax.bit_length()}-bit codes" + (f" per token [{c.out.m.size}]" if c.out.m.size > 1 else "")
    outliers = f", outliers |acc| > {c.outlier_threshold} -> int16" if c.has_outliers else ""
    return f"{name:<22} layernorm C={c.channels}, isqrt, F={c.frac_bits} -> {out}{outliers}"


def _softmax_text(name: str, c: SoftmaxConstants) -> str:
    kind = {UniformOutput: "uniform", LogOutput: "log (Q30 thresholds)", StepOutput: "step table (Q30)"}
    return f"{name:<22} softmax: integer exp2 (Q30), one reciprocal per row -> {kind[type(c.out)]} codes"


def describe(program: IntegerProgram) -> str:
    """A readable op listing: one line per op with its formats, rules and proven bounds."""
    p = program
    dim = p.cls_code.size
    lines = [f"IntegerProgram: {len(p.blocks)} blocks, {p.tokens} tokens, width {dim}, "
             f"{p.logit_scale.size} classes, residual int{RESIDUAL_BITS}",
             f"{'input':<22} image -> uniform codes (scale {p.image_scale:.6g}, zp {p.image_zero_point}, "
             f"max {p.image_qmax}), {p.patch}x{p.patch} patches",
             _gemm_text("patch_embed", p.embed),
             f"{'embed_to_res':<22} {_rule(p.embed_to_res)}; + position codes, class token code"]
    for i, b in enumerate(p.blocks):
        n = f"blocks.{i}."
        lines += [_norm_text(n + "norm1", b.norm1), _gemm_text(n + "attn.qkv", b.qkv),
                  f"{n + 'attn.to_q/k/v':<22} {_rule(b.to_q)}",
                  f"{n + 'attn.qk':<22} Q.K^T x {b.heads} heads: {_operand_text(b.qk.operand)}; "
                  f"|acc| <= {b.qk.acc_max}",
                  _softmax_text(n + "attn.softmax", b.softmax),
                  f"{n + 'attn.pv':<22} P.V: {_operand_text(b.pv.operand)}; |acc| <= {b.pv.acc_max}"
                  + (", saturated" if b.pv.saturated else ""),
                  f"{n + 'attn.to_proj_in':<22} {_rule(b.to_proj_in)}",
                  _gemm_text(n + "attn.proj", b.proj),
                  f"{n + 'residual add':<22} {_rule(b.res_to_mid)} + {_rule(b.attn_to_res)}",
                  _norm_text(n + "norm2", b.norm2), _gemm_text(n + "mlp.fc1", b.fc1),
                  f"{n + 'mlp.to_gelu':<22} {_rule(b.to_gelu)}",
                  f"{n + 'mlp.gelu':<22} step table, {b.gelu.thresholds.size} breakpoints -> codes "
                  f"[{int(b.gelu.codes.min())}, {int(b.gelu.codes.max())}]",
                  _gemm_text(n + "mlp.fc2", b.fc2),
                  f"{n + 'residual add':<22} {_rule(b.mid_to_out)} + {_rule(b.mlp_to_res)}"]
    lines += [_norm_text("norm", p.norm) + " (class token only)", _gemm_text("head", p.head),
              f"{'logits':<22} accumulator x float scale per class (reporting only)"]
    return "\n".join(lines)
