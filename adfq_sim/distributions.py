"""The activation distributions the report draws: one post-LayerNorm and one post-GELU tensor of the FP32
model (histograms), and per calibrated model the quantizers that code those tensors (their integer forms).

The block drawn is the one whose post-LayerNorm tensor reaches the largest magnitude over the whole
calibration set: where the outliers are, PPOQ's and uniform levels differ most. Its histograms count
every calibration image too, so neither depends on how the set is batched.
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
             keep: Callable[[torch.Tensor], object] = torch.Tensor.detach) -> dict[str, object]:
    """`keep` of the output of each named submodule on one forward pass (a reduction keeps memory small)."""
    seen: dict[str, torch.Tensor] = {}
    with attached(model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, keep(out)))
                  for n in names):
        model(images)
    return seen


def _edges(low: float, high: float, log_spaced: bool) -> np.ndarray:
    if log_spaced and high > low:
        edges = low + np.concatenate([[0.0], np.geomspace(LOG_BINS_FLOOR * (high - low), high - low, HISTOGRAM_BINS)])
        edges[-1] = high  # exactly, so the maximum falls in the last bin
        return edges
    return np.linspace(low, high, HISTOGRAM_BINS + 1)


@torch.no_grad()
def capture(model: nn.Module, batches: list[torch.Tensor]) -> dict | None:
    """Histograms of the chosen block's post-LayerNorm and post-GELU tensors over every calibration batch
    (None for a model without such blocks). Two passes: the ranges of every block's tensors, then the
    chosen block's counts, so no activation outlives its batch."""
    blocks = transformer_blocks(model)
    if not blocks:
        return None
    sources = [f"{b}.{source}" for b in blocks for source, _, _ in CONSUMERS.values()]
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for images in batches:
        for name, (lo, hi) in _outputs(model, images, sources, keep=torch.aminmax).items():
            low[name] = min(low.get(name, np.inf), float(lo))
            high[name] = max(high.get(name, -np.inf), float(hi))
    block = max(blocks, key=lambda b: max(-low[f"{b}.norm1"], high[f"{b}.norm1"]))
    chosen = {key: (f"{block}.{source}", f"{block}.{consumer}", log_spaced)
              for key, (source, consumer, log_spaced) in CONSUMERS.items()}
    edges = {key: _edges(low[tensor], high[tensor], log_spaced) for key, (tensor, _, log_spaced) in chosen.items()}
    counts = {key: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for key in chosen}
    for images in batches:
        outputs = _outputs(model, images, [tensor for tensor, _, _ in chosen.values()])
        for key, (tensor, _, _) in chosen.items():
            counts[key] += np.histogram(outputs[tensor].double().flatten().numpy(), bins=edges[key])[0]
    tensors = {key: {"tensor": tensor, "quantizer": quantizer, "values": int(counts[key].sum()),
                     "min": low[tensor], "max": high[tensor], "edges": edges[key].tolist(),
                     "counts": counts[key].tolist()}
               for key, (tensor, quantizer, _) in chosen.items()}
    return {"block": block, "images": sum(len(images) for images in batches), **tensors}


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
