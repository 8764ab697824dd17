"""Quantizers: each owns its parameters, fake-quantizes, and knows its integer form for export.

Life cycle: `begin_calibration()` -> forward passes observe float values (and pass them through
unchanged) -> `end_calibration()` freezes the parameters. After that a quantizer is a fixed function
of its input element: no statistic of the current batch is ever used.
"""

from __future__ import annotations

import torch
from torch import nn

from adfq_sim.formats import LOG_BASES, log2_of_base
from adfq_sim.quant.observers import SEARCH_PERCENTILES, Observer, SampleObserver, uniform_params
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
        return self.fake_quant(x)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized value of x in float (formats with a side path override this)."""
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
        if self.granularity == "tensor":
            lo, hi = lo.reshape(()), hi.reshape(())
        scale, zero_point = uniform_params(lo, hi, self.qmax)
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


# min over x of GELU(x) = x * Phi(x), reached at x = -0.7517915 (exact erf GELU, float64). Every GELU
# output is >= this, so a static shift (SLQ, PTQ4ViT's GELU twin range) makes all values non-negative without looking at the batch;
# it folds into the next layer's bias. (tanh-approximate GELU reaches -0.1700408: the few values below
# the shift then take the zero code, an error below 1e-4.)
GELU_MINIMUM = -0.16997120747990366

LOG_GRID_PHASES = 4  # delta search: sub-step shifts of the log grid tried per clip candidate


class LogQuantizer(Quantizer):
    """Log quantizer: code q means `shift + delta * base**(-q)`; the top code means `shift` (zero).

    x' = x - shift must be >= 0: shift = 0 for softmax outputs, shift = the GELU minimum for SLQ
    (post-GELU), a static constant so a code never depends on the batch. Rounding is half up in the
    log domain, q = round(-log_base(x' / delta)) clamped to [0, top - 1], except below the smallest
    level, where the linear midpoint decides: x' < smallest level / 2 takes the zero code. (Rounding to
    zero in the log domain would send every x' under ~0.7x the smallest level to zero, which at 3 bits
    is most of the post-GELU values near 0.)
    delta comes from the calibration maximum (`delta_init="max"`) or an MSE search over percentile
    clip ranges (`"search"`).
    """

    format = "log"

    def __init__(self, bits: int, base: str = "sqrt2", shift: float = 0.0, delta_init: str = "max") -> None:
        super().__init__(bits)
        if base not in LOG_BASES:
            raise ValueError(f"unknown log base {base!r}; expected one of {sorted(LOG_BASES)}")
        if delta_init not in ("max", "search"):
            raise ValueError(f"unknown delta_init {delta_init!r}")
        self.base, self.shift, self.delta_init = base, float(shift), delta_init
        self.log2_base = log2_of_base(base)
        self.delta = nn.Parameter(torch.ones(()), requires_grad=False)
        self.observer: SampleObserver | None = SampleObserver()

    @property
    def zero_code(self) -> int:
        return self.qmax

    def observe(self, x: torch.Tensor) -> None:
        self.observer.observe(x - self.shift, tuple(range(x.ndim)))

    def _fake(self, shifted: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self._levels(self._codes(shifted, delta), delta)

    def freeze(self) -> None:
        values = torch.from_numpy(self.observer.values()).float().clamp(min=0)
        top = float(values.max())
        if top <= 0:
            delta = 1.0
        elif self.delta_init == "max":
            delta = top
        else:
            tops = [float(torch.quantile(values, p / 100.0)) if values.numel() <= 1 << 24 else top
                    for p in SEARCH_PERCENTILES]
            # Each clip top, and the level grid slid by quarter steps below it (the grid's phase
            # matters as much as its top for a log quantizer).
            candidates = [t * 2.0 ** (-j * self.log2_base / LOG_GRID_PHASES) for t in tops if t > 0
                          for j in range(LOG_GRID_PHASES)] or [top]
            errors = [float(((self._fake(values, torch.tensor(c)) - values) ** 2).mean()) for c in candidates]
            delta = candidates[errors.index(min(errors))]
        self.delta = nn.Parameter(torch.tensor(delta, dtype=torch.float32), requires_grad=False)
        self.observer = None

    def _codes(self, shifted: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        ratio = torch.clamp(shifted / delta, min=torch.finfo(torch.float32).tiny)
        raw = round_ste(torch.clamp(-torch.log2(ratio) / self.log2_base, 0, self.zero_code - 1))
        return torch.where(shifted >= self.zero_threshold(delta), raw, torch.full_like(raw, self.zero_code))

    def zero_threshold(self, delta: torch.Tensor) -> torch.Tensor:
        """Half the smallest non-zero level: below it a value is closer to zero than to any level."""
        return delta * 2.0 ** (-(self.zero_code - 1) * self.log2_base - 1)

    def _levels(self, codes: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        value = delta * torch.exp2(-codes * self.log2_base)
        return torch.where(codes >= self.zero_code, torch.zeros_like(value), value)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self._codes(x - self.shift, self.delta)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self._levels(codes, self.delta) + self.shift

    def integer_form(self) -> dict:
        return {
            "format": self.format,
            "bits": self.bits,
            "base": self.base,
            "code_min": 0,
            "code_max": self.qmax,
            "zero_code": self.zero_code,
            "delta": self.delta.detach().clone(),
            "shift": self.shift,
        }
