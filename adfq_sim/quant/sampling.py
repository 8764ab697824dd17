"""A bounded, seeded sample of a calibration stream that does not depend on how the stream is batched.

Percentile and MSE range searches read a sample of every value a quantizer sees during calibration;
ImageNet-sized calibration sets make keeping them all too costly. The sample must be a function of the
calibration set alone, not of the batch size, or the same config calibrates differently at batch 7 and
batch 64.

Every value gets a level from a hash of its place in the stream: the unit it belongs to (dim 0 of the
tensor: an image, or one of an image's windows; units are counted from the start of calibration) and
its position within the unit. Level l = the number of leading zero bits of the 64-bit hash (splitmix64's
finaliser), so a value has level >= h with probability 2^-h. The sample at depth h is every value of
level >= h: the samples at successive depths are nested halves, and when the kept values outgrow the
budget the depth rises until they fit. Which values survive depends only on their places in the stream,
so any batching gives the same sample, in the same order (stream order).
"""

from __future__ import annotations

import numpy as np
import torch

# Salt of the position hash: fixed, so the same calibration set always gives the same sample.
SAMPLE_SALT = 0x5D1F_ADF0_C0DE_2024
# Depths beyond this keep only values whose top 24 hash bits are all zero; no budget here needs more.
MAX_DEPTH = 24

_MASK64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea, Flood, OOPSLA 2014), wrapping uint64 arithmetic."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    return z ^ (z >> np.uint64(31))


def stream_levels(first_unit: int, units: int, width: int) -> np.ndarray:
    """Level (uint8, 0 .. MAX_DEPTH) of positions 0 .. width-1 of units first_unit .. first_unit+units-1."""
    place = (np.arange(first_unit, first_unit + units, dtype=np.uint64)[:, None] * np.uint64(width)
             + np.arange(width, dtype=np.uint64)[None, :]).reshape(-1)
    with np.errstate(over="ignore"):
        top = _splitmix64((place + np.uint64(SAMPLE_SALT)) & _MASK64) >> np.uint64(64 - MAX_DEPTH)
    bit_length = np.zeros(top.shape, dtype=np.int64)
    nonzero = top > 0
    bit_length[nonzero] = np.floor(np.log2(top[nonzero].astype(np.float64))).astype(np.int64) + 1
    return (MAX_DEPTH - bit_length).astype(np.uint8)


class StreamSample:
    """At most `budget` values of a stream of [rows, units, width] tensors, kept per (unit, position):
    the same positions in every row (PPOQ keeps one sample per token row over images and channels; a
    per-tensor range has one row)."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        self.budget = budget
        self.depth = 0
        self.units_seen = 0
        self._chunks: list[tuple[torch.Tensor, np.ndarray]] = []  # ([rows, kept] float32 values, levels)

    def add(self, values: torch.Tensor) -> None:
        """Append one batch: `values` [rows, units, width], units in stream order."""
        rows, units, width = values.shape
        levels = stream_levels(self.units_seen, units, width)
        self.units_seen += units
        keep = levels >= self.depth
        flat = values.detach().reshape(rows, units * width).float()
        self._chunks.append((flat[:, torch.from_numpy(np.flatnonzero(keep))].contiguous(), levels[keep]))
        while self._kept() > self.budget and self.depth < MAX_DEPTH:
            self.depth += 1
            self._chunks = [(v[:, torch.from_numpy(np.flatnonzero(lv >= self.depth))].contiguous(),
                             lv[lv >= self.depth]) for v, lv in self._chunks]

    def _kept(self) -> int:
        return sum(v.numel() for v, _ in self._chunks)

    def values(self) -> torch.Tensor:
        """[rows, kept] in stream order."""
        if not self._chunks:
            raise RuntimeError("observer saw no data: run calibration batches first")
        return torch.cat([v for v, _ in self._chunks], dim=1)
