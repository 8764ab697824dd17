"""Twin-uniform quantizer (PTQ4ViT): two uniform ranges in one b-bit code, steps D1 and D2 = 2^m * D1.

One uniform range serves post-softmax and post-GELU values badly: most attention probabilities are
tiny while the few large ones matter, and GELU's negative part lives in [-0.17, 0] while its positive
part reaches far higher. Two uniform ranges fix both, and because D2 / D1 is a power of two an integer
kernel aligns them with a shift: in units of the fine step D1, a coarse code's level is its low bits << m.

Codes have b bits, H = 2^(b-1); the top bit selects the range:
- mode "softmax" (values >= 0): code c < H means c * D1 (fine range, small probabilities), code c >= H
  means (c - H) * D2 (coarse range, up to the calibrated maximum). The fine range takes every value
  with x / D1 < H - 1/2, i.e. whose fine rounding stays below H.
- mode "gelu": the code read as a signed b-bit integer s: s >= 0 means s * D2 (positive part), s < 0
  means s * D1 (negative part). D1 is the finest power-of-two fraction of D2 whose range still covers a
  static lower bound (the GELU minimum), so no code depends on the batch.

Static calibration picks D2 and m from the calibration values (softmax: D2 from the maximum, m by MSE;
gelu: D2 by MSE among fractions of the maximum, m from the lower bound). PTQ4ViT's Hessian-guided
search (ptq4vit.py) may refine them afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from adfq_sim.quant.observers import SampleObserver
from adfq_sim.quant.quantizers import Quantizer
from adfq_sim.quant.rounding import round_ste

MODES = ("softmax", "gelu")
# Softmax shifts tried at calibration (and by the Hessian search): D1 = D2 / 2^m, m = 0 .. MAX_SHIFT.
# PTQ4ViT's reference tries split points 2^-i for i < 20; 16 already puts D1 below 1e-5 of D2.
MAX_SHIFT = 16
# GELU positive ranges tried at calibration, as fractions of the calibration maximum.
GELU_RANGE_FRACTIONS = tuple(i / 20 for i in range(1, 21))
# The calibration MSE search reads at most this many values (a fixed stride through the sample).
MSE_SAMPLE = 1 << 16


def cover_shift(step: torch.Tensor, bits: int, lower: float) -> torch.Tensor:
    """Largest m >= 0 with 2^(b-1) * step / 2^m >= |lower|: the finest negative range covering `lower`."""
    half, bound = 1 << (bits - 1), abs(lower)
    m = torch.floor(torch.log2(half * step / bound))
    m = torch.where(half * step * torch.exp2(-m) < bound, m - 1, m)  # guard against log2 rounding up
    return torch.clamp(m, min=0)


class TwinUniformQuantizer(Quantizer):
    """Per-tensor twin-uniform quantizer; `step` is D2 (coarse), `shift` is m, D1 = step / 2^shift."""

    format = "twin_uniform"

    def __init__(self, bits: int, mode: str = "softmax", lower: float | None = None) -> None:
        super().__init__(bits)
        if mode not in MODES:
            raise ValueError(f"unknown twin-uniform mode {mode!r}; expected one of {MODES}")
        if mode == "gelu" and (lower is None or not lower < 0):
            raise ValueError(f"mode 'gelu' needs a negative static lower bound, got {lower!r}")
        if mode == "softmax" and lower is not None:
            raise ValueError("mode 'softmax' takes no lower bound (its values are >= 0)")
        self.mode, self.lower = mode, lower
        self.step = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_buffer("shift", torch.zeros(()))
        self.observer: SampleObserver | None = SampleObserver()

    @property
    def half(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def fine_step(self) -> torch.Tensor:
        return self.step * torch.exp2(-self.shift)

    def observe(self, x: torch.Tensor) -> None:
        self.observer.observe(x, tuple(range(x.ndim)))

    def set_params(self, step: torch.Tensor, shift: torch.Tensor) -> None:
        """Load D2 and m (static parameters) in place."""
        with torch.no_grad():
            self.step.copy_(step)
            self.shift.copy_(shift)

    def freeze(self) -> None:
        values = torch.from_numpy(self.observer.values()).float()
        top = float(values.max())
        top = top if top > 0 else 1.0  # nothing positive seen: any positive range will do
        self.observer = None
        values = values[::max(1, -(-values.numel() // MSE_SAMPLE))]
        if self.mode == "softmax":
            shifts = torch.arange(MAX_SHIFT + 1, dtype=torch.float32)
            steps = torch.full_like(shifts, top / (self.half - 1))
        else:
            steps = torch.tensor(GELU_RANGE_FRACTIONS) * (top / (self.half - 1))
            shifts = cover_shift(steps, self.bits, self.lower)
        steps, shifts = steps[:, None], shifts[:, None]  # one candidate per row
        fine = steps * torch.exp2(-shifts)
        errors = ((self._decode(self._encode(values, steps, fine), steps, fine) - values) ** 2).mean(1)
        best = int(errors.argmin())
        self.set_params(steps[best, 0], shifts[best, 0])

    def _encode(self, x: torch.Tensor, step: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        half = self.half
        if self.mode == "softmax":
            ratio = x / fine
            in_fine = ratio < half - 0.5  # the fine rounding stays below H
            level = round_ste(torch.clamp(torch.where(in_fine, ratio, x / step), 0, half - 1))
            return torch.where(in_fine, level, level + half)
        level = round_ste(torch.clamp(torch.where(x < 0, x / fine, x / step), -half, half - 1))
        return torch.where(level < 0, level + 2 * half, level)

    def _decode(self, codes: torch.Tensor, step: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        half = self.half
        if self.mode == "softmax":
            return torch.where(codes >= half, (codes - half) * step, codes * fine)
        return torch.where(codes >= half, (codes - 2 * half) * fine, codes * step)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x, self.step, self.fine_step)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self._decode(codes, self.step, self.fine_step)

    def integer_form(self) -> dict:
        """Both ranges as (code interval, zero-point, step): value = (code - zero_point) * step.

        Equivalently value = fine_step * level, level = code - zero_point, shifted left by `shift` in the
        coarse range: the two ranges share one accumulator after a shift.
        """
        half, fine, coarse = self.half, self.fine_step.detach().clone(), self.step.detach().clone()
        low, high = {"code_min": 0, "code_max": half - 1}, {"code_min": half, "code_max": 2 * half - 1}
        if self.mode == "softmax":
            ranges = [{**low, "zero_point": 0, "step": fine, "coarse": False},
                      {**high, "zero_point": half, "step": coarse, "coarse": True}]
        else:
            ranges = [{**low, "zero_point": 0, "step": coarse, "coarse": True},
                      {**high, "zero_point": 2 * half, "step": fine, "coarse": False}]
        return {
            "format": self.format,
            "bits": self.bits,
            "mode": self.mode,
            "code_min": 0,
            "code_max": self.qmax,
            "select_bit": self.bits - 1,
            "fine_step": fine,
            "shift": int(self.shift),
            "ranges": ranges,
        }
