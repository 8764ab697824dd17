"""PPOQ — the Per-Patch Outlier-aware Quantizer of ADFQ-ViT, for post-LayerNorm activations.

Post-LayerNorm activations of ViTs mix a few huge values (a handful of channels in a handful of
tokens) with a dense bulk whose spread differs from token to token. PPOQ therefore:
- takes values with |x| > alpha (a fixed absolute threshold) out of the dense tensor: they travel in a
  sparse side list, either in float (the paper) or as int16 codes on a power-of-two fraction of their
  token's own step, step / 2**outlier_shift (what an integer accelerator executes: the sparse
  products land in the dense accumulator after a shift); the dense code there holds the zero-point,
  i.e. the value 0;
- quantizes the rest uniformly with a step and zero-point per token *position* (shape [1, N, 1]),
  static after calibration, each chosen among percentile clip ranges by the smallest MSE.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adfq_sim.formats import OUTLIER_MAX, OUTLIER_MIN
from adfq_sim.quant.observers import SEARCH_PERCENTILES, best_range_per_row, uniform_params
from adfq_sim.quant.quantizers import Quantizer
from adfq_sim.quant.rounding import round_ste
from adfq_sim.quant.sampling import StreamSample

# The outlier sub-step shift is the largest that keeps OUTLIER_HEADROOM times the largest calibration
# magnitude inside int16 on the finest token step, capped at MAX_OUTLIER_SHIFT.
OUTLIER_HEADROOM = 4.0
MAX_OUTLIER_SHIFT = 12
OUTLIER_MODES = ("int16", "float")
# Calibration keeps at most this many values per quantizer: a seeded sample of (image, channel) places,
# the same for every token row and at any batch size (adfq_sim.quant.sampling).
MAX_CALIBRATION_VALUES = 1 << 22


class PerPatchOutlierQuantizer(Quantizer):
    format = "ppoq"

    def __init__(self, bits: int, alpha: float, outliers: str = "int16") -> None:
        super().__init__(bits)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if outliers not in OUTLIER_MODES:
            raise ValueError(f"unknown outlier mode {outliers!r}; expected one of {OUTLIER_MODES}")
        self.alpha, self.outliers = float(alpha), outliers
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(()))
        self._sample = StreamSample(MAX_CALIBRATION_VALUES)
        self._calib_counts = [0, 0]  # outliers, elements seen during calibration
        self._calib_max_abs = 0.0
        self.outlier_shift = 0
        self.calib_outlier_ratio: float | None = None
        self.outlier_count = 0
        self.element_count = 0

    @staticmethod
    def _tokens_first(x: torch.Tensor) -> torch.Tensor:
        """[B, *tokens, C] -> [T, B, C]: one row of values per token position, images as the stream's units."""
        tokens = math.prod(x.shape[1:-1])
        return x.reshape(x.shape[0], tokens, x.shape[-1]).transpose(0, 1)

    def observe(self, x: torch.Tensor) -> None:
        if x.ndim < 3:
            raise ValueError(f"PPOQ needs [batch, tokens..., channels] activations, got shape {tuple(x.shape)}")
        mask = x.abs() > self.alpha
        self._calib_counts[0] += int(mask.sum())
        self._calib_counts[1] += x.numel()
        self._calib_max_abs = max(self._calib_max_abs, float(x.abs().max()))
        self._sample.add(self._tokens_first(torch.where(mask, torch.zeros_like(x), x)))
        self._token_shape = tuple(x.shape[1:-1])

    def freeze(self) -> None:
        values = torch.sort(self._sample.values(), dim=1).values
        last = values.shape[1] - 1
        candidates = ((values[:, round((1 - p / 100) * last), None], values[:, round(p / 100 * last), None])
                      for p in SEARCH_PERCENTILES)
        scale, zero_point = uniform_params(*best_range_per_row(values, candidates, self.bits), self.qmax)
        shape = (1, *self._token_shape, 1)
        self.scale = nn.Parameter(scale.reshape(shape), requires_grad=False)
        self.zero_point = zero_point.reshape(shape)
        self.calib_outlier_ratio = self._calib_counts[0] / self._calib_counts[1]
        magnitude = max(self._calib_max_abs, self.alpha) * OUTLIER_HEADROOM
        fits = math.floor(math.log2(OUTLIER_MAX * float(scale.min()) / magnitude))
        self.outlier_shift = int(min(MAX_OUTLIER_SHIFT, max(0, fits)))
        self._sample = StreamSample(MAX_CALIBRATION_VALUES)

    def _check_tokens(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:-1]) != tuple(self.scale.shape[1:-1]):
            raise ValueError(f"PPOQ was calibrated for token shape {tuple(self.scale.shape[1:-1])}, "
                             f"got {tuple(x.shape[1:-1])} (the input size must not change)")

    def outlier_mask(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() > self.alpha

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes; outlier positions hold the zero-point (value 0)."""
        self._check_tokens(x)
        dense = torch.where(self.outlier_mask(x), torch.zeros_like(x), x)
        return round_ste(torch.clamp(dense / self.scale + self.zero_point, 0, self.qmax))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.zero_point) * self.scale

    def outlier_step(self) -> torch.Tensor:
        return self.scale * 2.0 ** -self.outlier_shift

    def outlier_codes(self, x: torch.Tensor) -> torch.Tensor:
        """int16 codes of every element on its token's outlier step (only meaningful where outlier_mask)."""
        return round_ste(torch.clamp(x / self.outlier_step(), OUTLIER_MIN, OUTLIER_MAX))

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes where |x| <= alpha, the sparse outlier path elsewhere; counts the outliers."""
        mask = self.outlier_mask(x)
        self.outlier_count += int(mask.sum())
        self.element_count += x.numel()
        dense = self.dequantize(self.quantize(x))
        sparse = x if self.outliers == "float" else self.outlier_codes(x) * self.outlier_step()
        return torch.where(mask, sparse, dense)

    def reset_counters(self) -> None:
        self.outlier_count = self.element_count = 0

    def integer_form(self) -> dict:
        return {
            "format": self.format,
            "bits": self.bits,
            "granularity": "token",
            "code_min": 0,
            "code_max": self.qmax,
            "scale": self.scale.detach().clone(),
            "zero_point": self.zero_point.to(torch.int32),
            "alpha": self.alpha,
            "outliers": self.outliers,
            "outlier_shift": self.outlier_shift,
            "outlier_code_min": OUTLIER_MIN,
            "outlier_code_max": OUTLIER_MAX,
        }
