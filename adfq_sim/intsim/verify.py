"""Per-tensor code comparison of two executions of one IntegerProgram.

Two executors (the int64 reference, the Numba simulator, the integer-faithful PyTorch mode) each return a
codes dict keyed by verified tensor ("embed_in", "blocks.3.q", ..., "head_in"), each [B, ...]. The bar is
zero mismatched codes at every tensor, so the report is per tensor: where executors diverge first is
where the bug is. Differing key sets or shapes are a structural bug, not a mismatch count, and raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

CodesLike = Mapping[str, "np.ndarray | torch.Tensor"]


@dataclass(frozen=True)
class LayerReport:
    """One quantized tensor: op (e.g. "blocks.3", "" at model level), tensor ("q"), its format, and the
    comparison."""

    op: str
    tensor: str
    format: str
    elements: int
    mismatches: int
    max_abs_diff: int

    @property
    def name(self) -> str:
        return f"{self.op}.{self.tensor}" if self.op else self.tensor

    def as_dict(self) -> dict:
        return asdict(self)


def _int64(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    array = codes.numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"codes must be integers, got {array.dtype}")
    return array.astype(np.int64)


def verify(codes_a: CodesLike, codes_b: CodesLike, formats: Mapping[str, str] | None = None) -> list[LayerReport]:
    """Compare two codes dicts tensor by tensor, in codes_a's (execution) order; `formats` names each
    tensor's format (`IntegerProgram.tensor_formats`), "-" where not given."""
    if set(codes_a) != set(codes_b):
        raise ValueError(f"the executions recorded different tensors: only in a {sorted(set(codes_a) - set(codes_b))},"
                         f" only in b {sorted(set(codes_b) - set(codes_a))}")
    reports = []
    for name in codes_a:
        a, b = _int64(codes_a[name]), _int64(codes_b[name])
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
        diff = np.abs(a - b)
        op, _, tensor = name.rpartition(".")
        reports.append(LayerReport(op, tensor, (formats or {}).get(name, "-"), int(a.size), int((diff != 0).sum()),
                                   int(diff.max()) if diff.size else 0))
    return reports


def total_mismatches(reports: Sequence[LayerReport]) -> int:
    """The verification verdict: 0 means the two executions agree at every code."""
    return sum(r.mismatches for r in reports)


def format_table(reports: Sequence[LayerReport]) -> str:
    """A fixed-width table, one row per tensor, and a total line."""
    header = ("op", "tensor", "format", "elements", "mismatches", "max |diff|")
    rows = [(r.op or "-", r.tensor, r.format, str(r.elements), str(r.mismatches), str(r.max_abs_diff))
            for r in reports]
    rows.append(("total", "", "", str(sum(r.elements for r in reports)), str(total_mismatches(reports)),
                 str(max((r.max_abs_diff for r in reports), default=0))))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
