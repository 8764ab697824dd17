"""Range observers: how a quantizer picks its clipping range [lo, hi] from calibration data.

An observer accumulates statistics over calibration batches and is read once at the end, so the
quantizer's parameters are static: nothing depends on the batch being evaluated.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from adfq_sim.quant.sampling import StreamSample

# Per-tensor percentile and MSE searches read at most this many calibration values: a seeded sample of
# the whole calibration set that no batch size changes (adfq_sim.quant.sampling).
PERCENTILE_SAMPLE_BUDGET = 1 << 20
# Clip-range candidates (percentiles) searched by MSE, as in the ADFQ-ViT reference implementation
# ({0.999, 0.9999, 0.99999}), plus the full range.
SEARCH_PERCENTILES = (99.9, 99.99, 99.999, 100.0)


def uniform_params(lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) of an asymmetric uniform quantizer for the range [lo, hi].

    The one rule every uniform quantizer uses: the range is widened to include 0 (zero is exact), a
    zero-width range gets scale 1 (any positive scale represents it exactly), and the zero-point is
    rounded half up and clamped to the code range.
    """
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # also a width that underflows to 0
    return scale, torch.clamp(torch.floor(-lo / scale + 0.5), 0, qmax)


def uniform_mse(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """MSE of asymmetric uniform quantization of `values` with range [lo, hi] (reduced along `dim`).

    Uses UniformQuantizer's parameters and round-half-up rule, so the search optimises the quantizer
    that will actually run.
    """
    qmax = (1 << bits) - 1
    scale, zero = uniform_params(lo, hi, qmax)
    codes = torch.floor(torch.clamp(values / scale + zero, 0, qmax) + 0.5)
    return (((codes - zero) * scale - values) ** 2).mean(dim=dim)


def best_range_per_row(rows: torch.Tensor, candidates: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `rows` [R, M], the candidate range ([R, 1] lo and hi) with the smallest MSE.

    Ties keep the earlier candidate.
    """
    best_err = best_lo = best_hi = None
    for lo, hi in candidates:
        err = uniform_mse(rows, lo, hi, bits, dim=1)[:, None]
        if best_err is None:
            best_err, best_lo, best_hi = err, lo, hi
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
    return best_lo, best_hi


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


def per_tensor_stream(x: torch.Tensor) -> torch.Tensor:
    """A batch as StreamSample takes it for a per-tensor range: one row, dim 0's entries (images, or
    windows of images) as the stream's units."""
    return x.reshape(1, x.shape[0], -1) if x.ndim else x.reshape(1, 1, 1)


class SampleObserver(Observer):
    """Keeps a bounded, seeded sample of all calibration values (per tensor), the same at any batch size."""

    def __init__(self) -> None:
        self.sample = StreamSample(PERCENTILE_SAMPLE_BUDGET)

    def observe(self, x: torch.Tensor, reduce_dims: tuple[int, ...]) -> None:
        if len(reduce_dims) != x.ndim:
            raise ValueError(f"{type(self).__name__} supports per-tensor ranges only")
        self.sample.add(per_tensor_stream(x))

    def values(self) -> np.ndarray:
        return self.sample.values()[0].double().numpy()

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


class PercentileMseObserver(Observer):
    """Range = the percentile clip range with the smallest MSE after quantizing at `bits`.

    The reference implementations' range init (ADFQ-ViT, RepQ-ViT), with their candidate lists.

    Per tensor (a bounded, seeded sample of the calibration values, the same at any batch size) or per
    index of dim 0 (a weight's output channels, each searched on its own, as the reference does).
    """

    def __init__(self, bits: int, percentiles: Sequence[float] = SEARCH_PERCENTILES) -> None:
        self.bits, self.percentiles = bits, tuple(percentiles)
        self.sample = StreamSample(PERCENTILE_SAMPLE_BUDGET)
        self.rows: list[torch.Tensor] = []  # per-channel: a static weight's rows
        self.shape: tuple[int, ...] = ()

    def observe(self, x: torch.Tensor, reduce_dims: tuple[int, ...]) -> None:
        if len(reduce_dims) == x.ndim:
            self.sample.add(per_tensor_stream(x))
        elif tuple(reduce_dims) == tuple(range(1, x.ndim)):
            self.rows.append(x.detach().float().reshape(x.shape[0], -1))
            self.shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        else:
            raise ValueError(f"{type(self).__name__}: per tensor or per dim-0 channel only")

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(self.rows, dim=1) if self.rows else self.sample.values()
        bounds = np.percentile(x.cpu().numpy(), [q for p in self.percentiles for q in (100.0 - p, p)], axis=1)
        bounds = torch.from_numpy(bounds).float().to(x.device).reshape(len(self.percentiles), 2, x.shape[0], 1)
        errors = torch.stack([uniform_mse(x, lo, hi, self.bits) for lo, hi in bounds])
        best = errors.argmin(dim=0)  # the first (narrowest) candidate on ties, as the reference
        rows = torch.arange(x.shape[0], device=x.device)
        return bounds[best, 0, rows].reshape(self.shape), bounds[best, 1, rows].reshape(self.shape)


# Per-channel clip ratios of the min/max range tried by ChannelMSEObserver (weights).
CHANNEL_CLIP_RATIOS = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0, 0.975, ..., 0.5


class ChannelMSEObserver(Observer):
    """Per-channel range: the channel's min/max shrunk by the clip ratio with the smallest MSE.

    For static tensors (weights): each output channel gets its own best clipping, which matters at
    3-4 bits where min/max ranges waste levels on a few large weights.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tensor: torch.Tensor | None = None

    def observe(self, x: torch.Tensor, reduce_dims: tuple[int, ...]) -> None:
        if reduce_dims != tuple(range(1, x.ndim)):
            raise ValueError("ChannelMSEObserver supports per-channel (dim 0) ranges only")
        if self.tensor is not None:
            raise ValueError("ChannelMSEObserver observes one static tensor")
        self.tensor = x.detach().float()

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tensor is None:
            raise RuntimeError("observer saw no data: run calibration batches first")
        rows = self.tensor.reshape(self.tensor.shape[0], -1)
        lo_full, hi_full = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
        best_lo, best_hi = best_range_per_row(
            rows, ((lo_full * ratio, hi_full * ratio) for ratio in CHANNEL_CLIP_RATIOS), self.bits)
        shape = (-1,) + (1,) * (self.tensor.ndim - 1)
        return best_lo.reshape(shape), best_hi.reshape(shape)
