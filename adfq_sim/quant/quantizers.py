"""Quantizers: each owns its parameters, fake-quantizes, and knows its integer form for export.

Life cycle: `begin_calibration()` -> forward passes observe float values (and pass them through
unchanged) -> `end_calibration()` freezes the parameters. After that a quantizer is a fixed function
of its input element: no statistic of the current batch is ever used.
"""

from __future__ import annotations

import torch
from torch import nn

from adfq_sim.quant.observers import Observer
from adfq_sim.quant.rounding import round_ste


class Quantizer(nn.Module):
    """Base class: the calibrate / freeze protocol shared by every format."""

    format: str = ""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {bits}")
        self.bits = bits
        self.enabled = True
        self.calibrating = False
        self.calibrated = False

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def begin_calibration(self) -> None:
        self.calibrating = True

    def end_calibration(self) -> None:
        self.calibrating = False
        self.freeze()
        self.calibrated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x.detach())
            return x
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError(f"{type(self).__name__} used before calibration")
        return self.dequantize(self.quantize(x))

    # Format-specific parts.
    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (held in a float tensor so gradients can pass straight through)."""
        raise NotImplementedError

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def integer_form(self) -> dict:
        """Everything an integer executor needs: format, bits, code range and the constants."""
        raise NotImplementedError


class UniformQuantizer(Quantizer):
    """Asymmetric uniform quantizer: code = clamp(round(x / scale) + zero_point, 0, 2^b - 1).

    granularity: "tensor" (one scale), or "channel" (one scale per index of dim 0: a weight's output
    channel). The range always includes 0, so zero is exactly representable (padding, masked values).
    """

    format = "uniform"

    def __init__(self, bits: int, granularity: str, observer: Observer) -> None:
        super().__init__(bits)
        if granularity not in ("tensor", "channel"):
            raise ValueError(f"unknown granularity {granularity!r}")
        self.granularity = granularity
        self.observer = observer
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(()))

    def _reduce_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(x.ndim)) if self.granularity == "tensor" else tuple(range(1, x.ndim))

    def observe(self, x: torch.Tensor) -> None:
        self.observer.observe(x, self._reduce_dims(x))

    def freeze(self) -> None:
        lo, hi = self.observer.range()
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        if self.granularity == "tensor":
            lo, hi = lo.reshape(()), hi.reshape(())
        scale = (hi - lo) / self.qmax
        # A constant-zero tensor or channel: any positive scale represents it exactly.
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(torch.floor(-lo / scale + 0.5), 0, self.qmax)
        self.scale = nn.Parameter(scale.float(), requires_grad=False)
        self.zero_point = zero_point.float()
        self.observer = None

    def calibrate_static(self, tensor: torch.Tensor) -> None:
        """Calibrate from a tensor known in advance (a weight): observe it once and freeze."""
        self.begin_calibration()
        self(tensor.detach())
        self.end_calibration()

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        # Clamping before rounding gives the same codes as after (zero_point is an integer) and keeps
        # huge ratios (a tiny scale) finite for the straight-through estimator.
        return round_ste(torch.clamp(x / self.scale + self.zero_point, 0, self.qmax))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.zero_point) * self.scale

    def integer_form(self) -> dict:
        return {
            "format": self.format,
            "bits": self.bits,
            "granularity": self.granularity,
            "code_min": 0,
            "code_max": self.qmax,
            "scale": self.scale.detach().clone(),
            "zero_point": self.zero_point.to(torch.int32),
        }
