"""The workload of one inference, read off an IntegerProgram: what the simulator executes, as op counts.

The cost model prices exactly these ops, so they come from the deployed program (shapes, operand
formats and widths, log-coded and twin operands, non-linear ops), never from the float model. Counts
are per image. PPOQ outliers are data-dependent: `outliers_per_image` supplies the measured count per
post-LayerNorm tensor (e.g. "blocks.0.qkv_in"); without it the sparse path counts zero.

GEMM kinds by the left operand's format: "dense" (uniform / PPOQ codes: integer MACs), "shift" (log
codes: shift-adds), "twin" (twin-uniform codes: one integer MAC per element, split over two ranges);
PPOQ outliers add "outlier" MACs, one per outlier and output channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from adfq_sim.intsim.nonlinear_reference import LogOutput, StepOutput
from adfq_sim.intsim.program import RESIDUAL_BITS, Gemm, IntegerProgram, LogOperand, Operand, TwinOperand

ACC_BITS = 32  # Q.K^T scores and the fc1 accumulator (GELU's input) leave their GEMM as int32


@dataclass(frozen=True)
class GemmOp:
    """One matrix multiplication per image: `groups` products of [m, k] x [k, n]."""

    name: str
    kind: str  # dense | shift | twin
    m: int
    n: int
    k: int
    groups: int
    a_bits: int  # left operand (activation codes)
    b_bits: int  # right operand (weight codes, or the other activation's codes)
    a_format: str
    weights: bool  # the right operand is a weight tensor (read from memory) rather than an activation
    out_bits: int  # width of what the GEMM stores: the next op's codes, residual codes, or int32 scores
    outliers: float = 0.0  # PPOQ outliers in the left operand (measured, per image)

    @property
    def macs(self) -> int:
        return self.groups * self.m * self.n * self.k

    @property
    def outlier_macs(self) -> float:
        return self.outliers * self.n


@dataclass(frozen=True)
class VectorOp:
    """A non-GEMM integer op on `elements` values per image (layernorm, softmax, gelu, requant, add)."""

    name: str
    kind: str
    elements: int


@dataclass(frozen=True)
class Workload:
    gemms: list[GemmOp]
    vector_ops: list[VectorOp]

    def macs(self, kind: str | None = None) -> int:
        """Total MACs per image, or those of one GEMM kind."""
        return sum(g.macs for g in self.gemms if kind is None or g.kind == kind)


def _kind(operand: Operand) -> str:
    if isinstance(operand, LogOperand):
        return "shift"
    return "twin" if isinstance(operand, TwinOperand) else "dense"


def _weight_bits(g: Gemm) -> int:
    """Bits of a weight code: the widest per-channel span of the stored codes minus zero-points."""
    span = int((g.weight.max(axis=1) - g.weight.min(axis=1)).max(initial=0))
    return max(1, span.bit_length())


def _code_bits(qmax: int) -> int:
    return max(1, int(qmax).bit_length())


def _probs_bits(out) -> int:
    if isinstance(out, LogOutput):
        return _code_bits(out.zero_code)
    if isinstance(out, StepOutput):
        return _code_bits(int(out.codes.max()))
    return _code_bits(out.qmax)


def workload(program: IntegerProgram, outliers_per_image: dict[str, float] | None = None) -> Workload:
    """The per-image GEMMs and vector ops of `program`."""
    outliers = outliers_per_image or {}
    p = program
    t, d = p.tokens, p.cls_code.size
    gemms = [GemmOp("patch_embed", "dense", t - 1, d, p.embed.weight.shape[1], 1, _code_bits(p.image_qmax),
                    _weight_bits(p.embed), p.embed.operand.format, True, RESIDUAL_BITS)]
    vector = [VectorOp("embed_to_res", "requant", (t - 1) * d)]
    for i, b in enumerate(p.blocks):
        n = f"blocks.{i}."
        hd = d // b.heads
        hidden = b.fc1.weight.shape[0]
        q_bits, v_bits, pin_bits = (_code_bits(r.hi) for r in (b.to_q, b.to_v, b.to_proj_in))
        gemms += [
            GemmOp(n + "attn.qkv", _kind(b.qkv.operand), t, 3 * d, d, 1, _code_bits(b.norm1.out.qmax),
                   _weight_bits(b.qkv), b.qkv.operand.format, True, q_bits, outliers.get(n + "qkv_in", 0.0)),
            GemmOp(n + "attn.qk", "dense", t, t, hd, b.heads, q_bits, _code_bits(b.to_k.hi), "uniform", False,
                   ACC_BITS),
            GemmOp(n + "attn.pv", _kind(b.pv.operand), t, hd, t, b.heads, _probs_bits(b.softmax.out), v_bits,
                   b.pv.operand.format, False, pin_bits),
            GemmOp(n + "attn.proj", _kind(b.proj.operand), t, d, d, 1, pin_bits, _weight_bits(b.proj),
                   b.proj.operand.format, True, RESIDUAL_BITS),
            GemmOp(n + "mlp.fc1", _kind(b.fc1.operand), t, hidden, d, 1, _code_bits(b.norm2.out.qmax),
                   _weight_bits(b.fc1), b.fc1.operand.format, True, ACC_BITS, outliers.get(n + "fc1_in", 0.0)),
            GemmOp(n + "mlp.fc2", _kind(b.fc2.operand), t, d, hidden, 1, _code_bits(int(b.gelu.codes.max())),
                   _weight_bits(b.fc2), b.fc2.operand.format, True, RESIDUAL_BITS),
        ]
        vector += [VectorOp(n + "norm1", "layernorm", t * d), VectorOp(n + "attn.to_qkv", "requant", 3 * t * d),
                   VectorOp(n + "attn.softmax", "softmax", b.heads * t * t),
                   VectorOp(n + "attn.to_proj_in", "requant", t * d), VectorOp(n + "residual1", "add", t * d),
                   VectorOp(n + "norm2", "layernorm", t * d), VectorOp(n + "mlp.gelu", "gelu", t * hidden),
                   VectorOp(n + "residual2", "add", t * d)]
    classes = p.head.weight.shape[0]
    gemms.append(GemmOp("head", _kind(p.head.operand), 1, classes, d, 1, _code_bits(p.norm.out.qmax),
                        _weight_bits(p.head), p.head.operand.format, True, ACC_BITS))
    vector.append(VectorOp("norm", "layernorm", d))
    return Workload(gemms, vector)
