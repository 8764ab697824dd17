"""The workload of one inference, read off an IntegerProgram: what the simulator executes, as op counts.

The cost model prices exactly these ops, so they come from the deployed program's op list (shapes,
operand formats and widths, non-linear ops), never from the float model. Counts are per image. PPOQ
outliers are data-dependent: `outliers_per_image` supplies the measured count per post-LayerNorm
codes tensor (e.g. "blocks.0.qkv_in"); without it the sparse path counts zero.

A GEMM's kind is its left operand's format's (`formats.FORMATS`): "dense" (uniform / PPOQ codes:
integer MACs), "shift" (log codes: shift-adds), "twin" (twin-uniform codes: one integer MAC per element,
split over two ranges); PPOQ outliers add "outlier" MACs, one per outlier and output channel. Ops that
only move rows (patches, Swin's window partition and reverse, patch merging's gather, the class token)
are address generation: they cost no vector-unit work. A GEMM's output width is what it stores: the
codes its accumulator is requantized to (following a Requantize or a residual add), else the int32
accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Union

from adfq_sim.formats import ACCUMULATOR, ACCUMULATOR_BITS, FORMATS
from adfq_sim.intsim.ops import (AddPositions, AttentionMix, AttentionScores, Gather, Gelu, ImageInput, LayerNorm,
                                 Linear, MeanPool, Op, Patchify, QuantizeTokens, Requantize, ResidualAdd, Softmax,
                                 op_inputs)
from adfq_sim.intsim.program import IntegerProgram


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

    def products(self) -> list[tuple[str, GemmOp]]:
        """(name, GEMM) per product the array runs per image: a grouped GEMM (attention heads, Swin windows)
        once per group, named `<gemm>.<group>`; how the peer tools' exports list them."""
        return [(g.name if g.groups == 1 else f"{g.name}.{i}", g) for g in self.gemms for i in range(g.groups)]


def _weight_bits(weight) -> int:
    """Bits of a weight code: the widest per-channel span of the stored codes minus zero-points."""
    span = int((weight.max(axis=1) - weight.min(axis=1)).max(initial=0))
    return max(1, span.bit_length())


class _Reader:
    """The program with the lookups pricing needs: tensor shapes and widths, and who reads a tensor."""

    def __init__(self, program: IntegerProgram, outliers: dict[str, float]) -> None:
        self.program, self.outliers = program, outliers
        self.readers: dict[str, Op] = {}
        for op in program.ops:
            for name in op_inputs(op):
                self.readers.setdefault(name, op)

    def elements(self, name: str) -> int:
        t = self.program.tensor(name)
        return t.rows * t.cols

    def bits(self, name: str) -> int:
        return self.program.tensor(name).bits

    def stored_bits(self, name: str) -> int:
        """The width a GEMM output is stored at: an accumulator requantized by its reader (a Requantize,
        a residual add) is stored as that reader's output; others as they are."""
        if self.program.tensor(name).format != ACCUMULATOR.name:
            return self.bits(name)
        reader = self.readers.get(name)
        if isinstance(reader, (Requantize, ResidualAdd)):
            return self.bits(reader.output)
        return ACCUMULATOR_BITS


def _kind(fmt: str) -> str:
    return FORMATS[fmt].kind


def _linear(op: Linear, r: _Reader) -> Iterator[Union[GemmOp, VectorOp]]:
    rows = r.program.tensor(op.input).rows
    n, k = op.gemm.weight.shape
    yield GemmOp(op.name, _kind(op.gemm.operand.format), rows, n, k, 1, r.bits(op.input), _weight_bits(op.gemm.weight),
                 op.gemm.operand.format, True, r.stored_bits(op.outputs[0].output), r.outliers.get(op.input, 0.0))
    if op.requant_name:
        yield VectorOp(op.requant_name, "requant", sum(r.elements(s.output) for s in op.outputs if s.rule is not None))


def _scores(op: AttentionScores, r: _Reader) -> Iterator[Union[GemmOp, VectorOp]]:
    q = r.program.tensor(op.q)
    windows = q.rows // op.tokens
    yield GemmOp(op.name, _kind(op.operand.format), op.tokens, op.tokens, q.cols // op.heads, windows * op.heads,
                 r.bits(op.q), r.bits(op.k), op.operand.format, False, r.stored_bits(op.output))
    if op.bias is not None or op.mask is not None:
        yield VectorOp(op.bias_name, "add", r.elements(op.output))


def _mix(op: AttentionMix, r: _Reader) -> Iterator[GemmOp]:
    v = r.program.tensor(op.v)
    yield GemmOp(op.name, _kind(op.operand.format), op.tokens, v.cols // op.heads, op.tokens,
                 (v.rows // op.tokens) * op.heads, r.bits(op.probs), r.bits(op.v), op.operand.format, False,
                 r.stored_bits(op.output))


def _vector(kind: str, source: Callable[[Op], str]) -> Callable[[Op, _Reader], Iterator[VectorOp]]:
    def price(op: Op, r: _Reader) -> Iterator[VectorOp]:
        yield VectorOp(op.name, kind, r.elements(source(op)))
    return price


def _moves_rows(op: Op, r: _Reader) -> Iterator[VectorOp]:
    """Patches, gathers, the input and the position codes: address generation, no vector-unit work."""
    return iter(())


# Every op type, so that a new one cannot go unpriced by omission.
PRICED: dict[type, Callable[[Op, _Reader], Iterator[Union[GemmOp, VectorOp]]]] = {
    ImageInput: _moves_rows, Patchify: _moves_rows, Gather: _moves_rows, AddPositions: _moves_rows,
    Linear: _linear, AttentionScores: _scores, AttentionMix: _mix,
    LayerNorm: _vector("layernorm", lambda op: op.input), Softmax: _vector("softmax", lambda op: op.input),
    Gelu: _vector("gelu", lambda op: op.input), Requantize: _vector("requant", lambda op: op.input),
    QuantizeTokens: _vector("requant", lambda op: op.input), ResidualAdd: _vector("add", lambda op: op.output),
    MeanPool: _vector("add", lambda op: op.input)}


def workload(program: IntegerProgram, outliers_per_image: dict[str, float] | None = None) -> Workload:
    """The per-image GEMMs and vector ops of `program`, in execution order."""
    reader = _Reader(program, outliers_per_image or {})
    gemms: list[GemmOp] = []
    vector: list[VectorOp] = []
    for op in program.ops:
        for item in PRICED[type(op)](op, reader):
            (gemms if isinstance(item, GemmOp) else vector).append(item)
    return Workload(gemms, vector)
