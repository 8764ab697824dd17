"""The format table: every integer format of the project, declared once.

A format is how a tensor's integers mean values. Each entry says what the rest of the project needs to
know about it: its name (in listings, verification tables and results.json), the values its codes
stand for (`levels`, read by the plots from a quantizer's integer form), the GEMM operand it becomes in
an IntegerProgram (an operand class below: its fields are the constants the accumulation rule needs),
how a GEMM accumulates that operand (`rule`, the text of the listing and of the docs) and the workload
kind the cost model prices it as (dense MACs, shift-adds, twin-range MACs). Non-operand formats (the
residual stream, PPOQ's sparse outlier codes, raw accumulators) are entries too, so every tensor of a
program names its format here.

The executors (`intsim.execute_reference`, `intsim.execute`, `intsim.faithful`) each implement one
accumulation per operand class; export picks the operand from a quantizer's integer form with
`operand_format`. A log base is a parameter of the log formats, not a format of its own in the code: a
new base is one `LOG_BASES` entry (every kernel handles base 2**(1/R) for any R).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

RESIDUAL_BITS = 20  # signed residual-stream codes (int32 storage); why 20: intsim/program.py
RESIDUAL_MAX = (1 << (RESIDUAL_BITS - 1)) - 1
OUTLIER_BITS = 16  # PPOQ's sparse outlier codes
OUTLIER_MIN, OUTLIER_MAX = -(1 << (OUTLIER_BITS - 1)), (1 << (OUTLIER_BITS - 1)) - 1
ACCUMULATOR_BITS = 32
# Log bases by name -> R with base = 2**(1/R): a code q = R * j + r means delta * 2**-j * 2**(-r/R).
LOG_BASES = {"2": 1, "sqrt2": 2}


def log2_of_base(base: str) -> float:
    """log2 of a log base by name (the exponent step of one code)."""
    return 1.0 / LOG_BASES[base]


# ------------------------------------------------------------------------------------ operand forms


@dataclass(frozen=True, eq=False)
class UniformOperand:
    """Uniform codes minus their zero-point ([1] per tensor, or [T] per token position)."""

    zero_point: np.ndarray

    @property
    def format(self) -> str:
        return "uniform"

    def describe(self) -> str:
        return f"uniform codes - {_zero_point_text(self.zero_point)}"


@dataclass(frozen=True, eq=False)
class OutlierOperand:
    """PPOQ: per-token uniform codes minus zero-points, plus sparse int16 outliers on step / 2**outlier_shift."""

    zero_point: np.ndarray
    outlier_shift: int

    @property
    def format(self) -> str:
        return "ppoq"

    def describe(self) -> str:
        return f"ppoq codes - {_zero_point_text(self.zero_point)}, << {self.outlier_shift} + sparse int16 outliers"


@dataclass(frozen=True, eq=False)
class LogOperand:
    """Log codes (zero_code means zero), multiplied by shifting with E = frac_bits fraction bits."""

    base: str
    frac_bits: int
    zero_code: int

    @property
    def format(self) -> str:
        return f"log{self.base}"

    @property
    def roots(self) -> int:
        return LOG_BASES[self.base]

    def describe(self) -> str:
        return f"log{self.base} codes (zero code {self.zero_code}) by shifts, E={self.frac_bits}"


@dataclass(frozen=True, eq=False)
class TwinOperand:
    """PTQ4ViT twin-uniform codes (mode softmax | gelu, half = 2**(b-1)): a coarse and a fine level
    operand, the coarse product shifted left by `shift`."""

    mode: str
    half: int
    shift: int

    @property
    def format(self) -> str:
        return "twin"

    def describe(self) -> str:
        return f"twin-{self.mode} codes: coarse << {self.shift} + fine"


Operand = Union[UniformOperand, OutlierOperand, LogOperand, TwinOperand]


def _zero_point_text(zp: np.ndarray) -> str:
    return f"zp[{zp.size}]" if zp.size > 1 else f"zp {int(zp[0])}"


# ---------------------------------------------------------------------------------------- levels


def _uniform_levels(form: dict) -> np.ndarray:
    codes = np.arange(form["code_min"], form["code_max"] + 1, dtype=np.float64)
    scale = np.atleast_1d(np.asarray(form["scale"], dtype=np.float64))[:, None]
    zero_point = np.atleast_1d(np.asarray(form["zero_point"], dtype=np.float64))[:, None]
    return (codes[None, :] - zero_point) * scale


def _log_levels(form: dict) -> np.ndarray:
    codes = np.arange(form["code_min"], form["code_max"] + 1, dtype=np.float64)
    zero_code = form["zero_code"]
    powers = np.exp2(-np.minimum(codes, zero_code) * log2_of_base(form["base"]))
    return np.where(codes >= zero_code, form["shift"], form["shift"] + form["delta"] * powers)[None, :]


def _twin_levels(form: dict) -> np.ndarray:
    """Both ranges hold 0, so the levels are the union of theirs."""
    return np.unique(np.concatenate([(np.arange(r["code_min"], r["code_max"] + 1) - r["zero_point"]) * r["step"]
                                     for r in form["ranges"]]))[None, :]


# ------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Format:
    """One integer format. kind: the workload kind of a GEMM whose left operand has this format (None
    for formats no GEMM takes as its left operand); operand: the IntegerProgram operand class;
    levels: the values of a quantizer's integer form, [rows, levels] (None where codes are not levels);
    rule: how a GEMM accumulates it, or what the codes are."""

    name: str
    kind: Optional[str]
    operand: Optional[type]
    levels: Optional[Callable[[dict], np.ndarray]]
    rule: str


def log_format(base: str, roots: int) -> Format:
    """The format of log codes of base 2**(1/roots) (one per `LOG_BASES` entry)."""
    rule = f"shift-add: code q = {roots}j + r adds (B << E) >> j to accumulator r"
    if roots > 1:
        rule += f", accumulator r weighted by 2**(-r/{roots}) by the dyadic rule"
    return Format(f"log{base}", "shift", LogOperand, _log_levels, rule)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("uniform", "dense", UniformOperand, _uniform_levels,
           "int32 sum of (codes - zero-point) x B, bound proven at export"),
    Format("ppoq", "dense", OutlierOperand, _uniform_levels,
           "(int32 dense sum << outlier_shift) + int64 sum of the sparse int16 outlier products, "
           "saturated to int32 where export proves it changes no code"),
    *[log_format(base, roots) for base, roots in LOG_BASES.items()],
    Format("twin", "twin", TwinOperand, _twin_levels,
           "(int32 coarse-level sum << shift) + int32 fine-level sum, saturated"),
    Format(f"int{RESIDUAL_BITS}", None, None, None, f"signed {RESIDUAL_BITS}-bit residual-stream codes"),
    Format(f"int{OUTLIER_BITS} outliers", None, None, None,
           f"PPOQ's sparse outlier codes (int{OUTLIER_BITS}, 0 where the dense code holds the value)"),
    Format("accumulator", None, None, None, "int32 accumulator (or a value on its grid), not a code"),
]}
RESIDUAL = FORMATS[f"int{RESIDUAL_BITS}"]
OUTLIERS = FORMATS[f"int{OUTLIER_BITS} outliers"]
ACCUMULATOR = FORMATS["accumulator"]


def quantizer_format(form: dict) -> Format:
    """The format of a quantizer's integer form (`Quantizer.integer_form()`)."""
    kind = form.get("format")
    name = {"uniform": "uniform", "ppoq": "ppoq", "twin_uniform": "twin"}.get(kind)
    if kind == "log":
        name = f"log{form['base']}"
    if name not in FORMATS:
        raise ValueError(f"unknown quantizer format {kind!r}" + (f" (base {form.get('base')!r})" if kind == "log" else ""))
    return FORMATS[name]


def levels(form: dict) -> np.ndarray:
    """The values a quantizer's integer form can represent, [rows, levels] sorted per row: one row per
    token (PPOQ) or channel (per-channel uniform), else one; PPOQ's sparse outliers are not levels."""
    return np.sort(quantizer_format(form).levels(form), axis=1)


def code_bits(max_code: int) -> int:
    """Bits of unsigned codes up to max_code (the width a tensor of such codes is stored and priced at)."""
    return max(1, int(max_code).bit_length())
