"""Evaluation: logits over the eval set, and the metrics that compare a quantized model with FP32."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from tqdm import tqdm


@torch.no_grad()
def collect_logits(model: torch.nn.Module, batches: Iterable, total: int | None, desc: str,
                   also: Optional[Callable[[torch.Tensor], None]] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """All eval logits (float64, for stable metrics) and labels (None for unlabelled data); `also` is
    called on every batch of images too (another model reading the same pass)."""
    logits, labels = [], []
    for images, batch_labels in tqdm(batches, total=total, desc=desc, unit="batch", disable=None, leave=False):
        if also is not None:
            also(images)
        out = model(images)
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"{desc}: non-finite logits")
        logits.append(out.double())
        if batch_labels is not None:
            labels.append(batch_labels)
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def top1(logits: torch.Tensor, labels: Optional[torch.Tensor]) -> Optional[float]:
    """Percent of images whose arg-max class is the label; None without labels."""
    if labels is None:
        return None
    return 100.0 * float((logits.argmax(-1) == labels).double().mean())


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Percent of images whose predicted class equals the reference model's."""
    return 100.0 * float((logits.argmax(-1) == reference.argmax(-1)).double().mean())


def sqnr_db(logits: torch.Tensor, reference: torch.Tensor) -> Optional[float]:
    """Signal-to-quantization-noise ratio of the logits in dB: 10 log10(|ref|^2 / |ref - x|^2).

    None when the two are identical (infinite SQNR has no JSON form).
    """
    noise = float(((reference - logits) ** 2).sum())
    if noise == 0.0:
        return None
    return 10.0 * math.log10(float((reference ** 2).sum()) / noise)


def fmt(value: Optional[float]) -> str:
    """A metric for log lines: two decimals, or n/a (no labels, identical logits)."""
    return "n/a" if value is None else f"{value:.2f}"
