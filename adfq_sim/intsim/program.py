"""IntegerProgram: the deployed model as a list of integer ops, its file format and its op listing.

The program is built by `export` from a calibrated QuantModel and read by the three executors
(`execute_reference`, `execute`, `faithful`), by verification and by the cost model's workload: each
walks `ops` (see `ops` for what each op does). Its semantics, fixed once here and in the modules named:
- GEMM operands are codes read by their format's operand form (`formats`); weights are codes minus
  their per-channel zero-points; a weight layer's bias lands on its accumulator's scale.
- Accumulators are int32. A dense GEMM's bound is proven at export (`bounds`). Where a GEMM sums
  parts on different steps (PPOQ's dense codes and sparse outliers, a twin-uniform operand's coarse and
  fine ranges) the parts are exact int32 / int64 sums, combined in int64 and *saturated* to
  +-(2**31 - 1) (`Gemm.saturated`, `reference.saturate`); export proves that saturation never changes
  the consumer's codes (a requantization whose output clamps before the int32 edge, a GELU table flat
  beyond it).
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
import io
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from adfq_sim.formats import OUTLIERS, RESIDUAL_BITS, LogOperand, OutlierOperand, TwinOperand, UniformOperand
from adfq_sim.intsim.nonlinear_reference import (GeluConstants, LayerNormConstants, LogOutput, SoftmaxConstants,
                                                 StepOutput, TokenCodes, UniformOutput)
from adfq_sim.intsim.ops import OP_TYPES, Gemm, ImageInput, Op, Requant, Slice, TensorInfo, op_outputs

FILE_FORMAT = "adfq-sim integer program"
FILE_VERSION = 2  # 2: a list of ops over named tensors (1: a fixed ViT block structure)


class UnsupportedProgramError(ValueError):
    """A QuantModel this exporter cannot express as an IntegerProgram."""


@dataclass(frozen=True, eq=False)
class IntegerProgram:
    """The deployed model. Floats: the input quantizer (images arrive in float) and the logit scales.

    model: what was exported ("vit", "swin"); tensors: every tensor the ops name; logits: the
    accumulator tensor that holds the class scores; logit_scale [classes] turns it into logits.
    """

    model: str
    tensors: list[TensorInfo]
    ops: list[Op]
    logits: str
    logit_scale: np.ndarray

    @cached_property
    def _by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo:
        return self._by_name[name]

    @property
    def image(self) -> ImageInput:
        """The input op: the image shape and quantizer the program takes."""
        return next(op for op in self.ops if isinstance(op, ImageInput))

    def tensor_formats(self) -> dict[str, str]:
        """Format of every verified tensor (the executors' codes keys), in execution order."""
        return {name: self.tensor(name).format for op in self.ops for name in op_outputs(op)
                if self.tensor(name).verified}

    def outlier_tensors(self) -> dict[str, str]:
        """PPOQ's outlier matrices: outlier tensor -> the dense codes tensor it completes."""
        return {op.outlier_output: op.output for op in self.ops
                if getattr(op, "outlier_output", None) is not None}


# ------------------------------------------------------------------------------------- file format

_CLASSES = {cls.__name__: cls for cls in (IntegerProgram, TensorInfo, Gemm, Requant, Slice, *OP_TYPES,
                                          UniformOperand, OutlierOperand, LogOperand, TwinOperand,
                                          LayerNormConstants, TokenCodes, SoftmaxConstants, GeluConstants,
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
    if isinstance(value, (np.integer, np.floating, np.bool_)):
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


def _write_npz(program: IntegerProgram, f: BinaryIO) -> None:
    arrays: dict[str, np.ndarray] = {}
    structure = {"format": FILE_FORMAT, "version": FILE_VERSION, "program": _encode(program, arrays, "p")}
    np.savez(f, __structure__=np.array(json.dumps(structure)), **arrays)


def save_program(program: IntegerProgram, path: str | Path) -> Path:
    """Write the program to one .npz file (arrays + a JSON structure; no pickle), atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "wb") as f:
        _write_npz(program, f)
    tmp.replace(path)
    return path


def program_bytes(program: IntegerProgram) -> bytes:
    """The program file's bytes: how a program travels to another process or machine."""
    buffer = io.BytesIO()
    _write_npz(program, buffer)
    return buffer.getvalue()


def program_from_bytes(data: bytes) -> IntegerProgram:
    """The program whose file bytes `program_bytes` gave."""
    return load_program(io.BytesIO(data))


def load_program(path: str | Path | BinaryIO) -> IntegerProgram:
    """Read a program written by `save_program`; a file of another kind or version is refused by name."""
    if isinstance(path, str):
        path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            structure = json.loads(str(data["__structure__"]))
            arrays = {key: data[key] for key in data.files if key != "__structure__"}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not an integer program file ({exc})") from None
    if structure.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not an integer program file")
    if structure.get("version") != FILE_VERSION:
        raise ValueError(f"{path}: an integer program file of version {structure.get('version')}; this adfq-sim "
                         f"reads version {FILE_VERSION} (export the model again)")
    return _decode(structure["program"], arrays)


# ------------------------------------------------------------------------------------------ listing


def describe(program: IntegerProgram) -> str:
    """A readable op listing: one line per op (name, output tensors with their format and shape, and the
    op's formats, rules and proven bounds)."""
    p = program
    verified = sum(t.verified for t in p.tensors)
    lines = [f"IntegerProgram ({p.model}): {len(p.ops)} ops, {len(p.tensors)} tensors ({verified} verified), "
             f"{p.logit_scale.size} classes, residual int{RESIDUAL_BITS}"]
    width = max(len(op.name) for op in p.ops)
    for op in p.ops:
        outs = ", ".join(f"{n} [{p.tensor(n).rows}x{p.tensor(n).cols} {p.tensor(n).format}]" for n in op_outputs(op)
                         if p.tensor(n).format != OUTLIERS.name)
        lines.append(f"{op.name:<{width}} {type(op).__name__.lower()} -> {outs}: {op.describe()}")
    lines.append(f"{'logits':<{width}} {p.logits} x float scale per class (reporting only)")
    return "\n".join(lines)
