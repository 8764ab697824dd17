"""Range observers: how a quantizer picks its clipping range [lo, hi] from calibration data.

An observer accumulates statistics over calibration batches and is read once at the end, so the
quantizer's parameters are static: nothing depends on the batch being evaluated.
"""

from __future__ import annotations

import numpy as np
import torch

# Percentile observers keep at most this many values per batch (a fixed stride through the tensor),
# which bounds memory on ImageNet-sized calibration sets while staying deterministic.
PERCENTILE_SAMPLES_PER_BATCH = 1 << 18


class Observer:
    def observe(self, x: torch.Tensor, reduce_dims: tuple[int, ...]) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running minimum and maximum over everything seen."""

    def __init__(self) -> None:
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def observe(self, x: torch.Tensor, reduce_dims: tuple[int, ...]) -> None:
        lo, hi = x.amin(dim=reduce_dims, keepdim=True), x.amax(dim=reduce_dims, keepdim=True)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None:
            raise RuntimeError("observer saw no data: run calibration batches first")
        return self.lo, self.hi


class SampleObserver(Observer):
    """Keeps a bounded, deterministic sample of all calibration values (per tensor)."""

    def __init__(self) -> None:
        self.samples: list[np.ndarray] = []

    def observe(self, x: torch.Tensor, reduce_dims: tuple[int, ...]) -> None:
        if len(reduce_dims) != x.ndim:
            raise ValueError(f"{type(self).__name__} supports per-tensor ranges only")
        flat = x.reshape(-1)
        stride = max(1, -(-flat.numel() // PERCENTILE_SAMPLES_PER_BATCH))
        self.samples.append(flat[::stride].double().numpy())

    def values(self) -> np.ndarray:
        if not self.samples:
            raise RuntimeError("observer saw no data: run calibration batches first")
        return np.concatenate(self.samples)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.values()
        return torch.tensor(values.min(), dtype=torch.float32), torch.tensor(values.max(), dtype=torch.float32)


class PercentileObserver(SampleObserver):
    """Clip at the p-th and (100-p)-th percentiles of all calibration values (per-tensor only)."""

    def __init__(self, percentile: float) -> None:
        super().__init__()
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = np.percentile(self.values(), [100.0 - self.percentile, self.percentile])
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
