"""The activation distributions the report draws: one post-LayerNorm and one post-GELU tensor of the FP32
model (histograms), and per calibrated model the quantizers that code those tensors (their integer forms).

The block drawn is the one whose post-LayerNorm tensor reaches the largest magnitude on the first
calibration batch: where the outliers are, PPOQ's and uniform levels differ most.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from adfq_sim.hooks import attached

HISTOGRAM_BINS = 128
# Post-GELU values crowd just above the GELU minimum, where SLQ puts its levels: their bins are spaced
# geometrically in the distance from the minimum, the first one this fraction of the range wide.
LOG_BINS_FLOOR = 1e-4
# The quantizer at each tensor's consumer, relative to its transformer block, and whether its histogram
# bins are log-spaced.
CONSUMERS = {"post_layernorm": ("norm1", "attn.qkv.act_q", False), "post_gelu": ("mlp.act", "mlp.fc2.act_q", True)}


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks with a pre-norm attention and an MLP (timm ViT / DeiT / Swin blocks)."""
    return [name for name, m in model.named_modules()
            if all(hasattr(m, a) for a in ("norm1", "attn", "mlp")) and hasattr(m.mlp, "act")]


def _outputs(model: nn.Module, images: torch.Tensor, names: list[str],
             keep: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach) -> dict[str, torch.Tensor]:
    """`keep` of the output of each named submodule on one forward pass (a reduction keeps memory small)."""
    seen: dict[str, torch.Tensor] = {}
    with attached(model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, keep(out)))
                  for n in names):
        model(images)
    return seen


def _histogram(values: torch.Tensor, tensor: str, quantizer: str, log_spaced: bool) -> dict:
    x = values.double().flatten().numpy()
    low, high = float(x.min()), float(x.max())
    if log_spaced and high > low:
        edges = low + np.concatenate([[0.0], np.geomspace(LOG_BINS_FLOOR * (high - low), high - low, HISTOGRAM_BINS)])
        edges[-1] = high  # exactly, so the maximum falls in the last bin
    else:
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    counts, edges = np.histogram(x, bins=edges)
    return {"tensor": tensor, "quantizer": quantizer, "values": int(x.size), "min": low, "max": high,
            "edges": edges.tolist(), "counts": counts.tolist()}


@torch.no_grad()
def capture(model: nn.Module, images: torch.Tensor) -> dict | None:
    """Histograms of the chosen block's post-LayerNorm and post-GELU tensors on `images` (None for a
    model without such blocks)."""
    blocks = transformer_blocks(model)
    if not blocks:
        return None
    peaks = _outputs(model, images, [f"{b}.norm1" for b in blocks], keep=lambda out: out.abs().max())
    block = max(blocks, key=lambda b: float(peaks[f"{b}.norm1"]))
    outputs = _outputs(model, images, [f"{block}.{source}" for source, _, _ in CONSUMERS.values()])
    tensors = {key: _histogram(outputs[f"{block}.{source}"], f"{block}.{source}", f"{block}.{consumer}", log_spaced)
               for key, (source, consumer, log_spaced) in CONSUMERS.items()}
    return {"block": block, "images": len(images), **tensors}


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.detach().double().flatten().tolist() if value.numel() > 1 else float(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def quantizer_forms(qmodel: nn.Module, distributions: dict | None) -> dict:
    """The integer form (format, steps, zero-points, log delta, PPOQ alpha ...) of the quantizer at each
    drawn tensor, as JSON values; a tensor whose consumer has no quantizer is left out."""
    if distributions is None:
        return {}
    forms = {}
    for key in CONSUMERS:
        try:
            quantizer = qmodel.model.get_submodule(distributions[key]["quantizer"])
        except AttributeError:
            continue
        forms[key] = _jsonable(quantizer.integer_form())
    return forms
