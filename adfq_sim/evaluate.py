"""The metrics that compare a quantized model's logits with FP32's (and with the labels)."""

from __future__ import annotations

import math
from typing import Optional

import torch

# SQNR is reported to this many decimals of a dB. The float32 logits it compares differ in their last
# bits with the batch size (CPU GEMM kernels block a batch of 7 rows differently from one of 64), which
# moved the SQNR by ~1e-8 dB; rounded, a config gives the same value at any batch size.
SQNR_DECIMALS = 3


def top1(logits: torch.Tensor, labels: Optional[torch.Tensor]) -> Optional[float]:
    """Percent of images whose arg-max class is the label; None without labels."""
    if labels is None:
        return None
    return 100.0 * float((logits.argmax(-1) == labels).double().mean())


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Percent of images whose predicted class equals the reference model's."""
    return 100.0 * float((logits.argmax(-1) == reference.argmax(-1)).double().mean())


def sqnr_db(logits: torch.Tensor, reference: torch.Tensor) -> Optional[float]:
    """Signal-to-quantization-noise ratio of the logits in dB: 10 log10(|ref|^2 / |ref - x|^2), rounded to
    SQNR_DECIMALS.

    None when the two are identical (infinite SQNR has no JSON form).
    """
    noise = float(((reference.double() - logits.double()) ** 2).sum())
    if noise == 0.0:
        return None
    return round(10.0 * math.log10(float((reference.double() ** 2).sum()) / noise), SQNR_DECIMALS)


def fmt(value: Optional[float]) -> str:
    """A metric for log lines: two decimals, or n/a (no labels, identical logits)."""
    return "n/a" if value is None else f"{value:.2f}"
