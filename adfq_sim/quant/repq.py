"""RepQ-ViT (Li et al., ICCV 2023): per-channel post-LayerNorm ranges reparameterized to per-tensor.

Post-LayerNorm activations vary by orders of magnitude from channel to channel, so one per-tensor
scale wastes most codes on the wide channels. RepQ-ViT calibrates them per channel and then folds the
per-channel scales into the LayerNorm affine and the next linear layer, an FP32-equivalent rewrite
after which a per-tensor quantizer sees channels with equal ranges.

The fold. With channel c's calibration range [lo_c, hi_c], width R_c = hi_c - lo_c, R = mean_c R_c,
r_c = R_c / R and L = mean_c(lo_c / r_c), the new activation is x'_c = x_c / r_c + t_c with
t_c = L - lo_c / r_c, so every channel spans exactly [L, L + R]:

    LayerNorm:   gamma' = gamma / r,   beta' = beta / r + t
    next linear: W' = W * r (per input column),   b' = b - W' @ t     (W' x' + b' = W x + b)

This is the paper's s = mean(s_c), r1 = s_c / s, r2 = z_c - z written without the bit-width
(s_c = R_c / qmax, so r1 = r; s_c r2 / r1 = t): `prepare` receives no bit-width, so one FP32 model serves
every bit-width and the per-tensor quantizer that follows picks its own zero-point (shared by all
channels, where the paper's integer r2 keeps each channel's zero exactly on the grid; the step per
channel, s_c, is the same). The per-channel ranges are min/max; the clipping search then runs per
tensor on the aligned activations at the target bits.

Quantizers (the reference implementation's): every uniform range, weights per output channel and
activations per tensor, is the clip range among the 99.9 / 99.99 / 99.999 percentiles with the smallest
fake-quant MSE at the target bits; softmax outputs get a log-sqrt2 quantizer with a searched delta.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Sequence

import torch
from torch import nn

from adfq_sim.errors import UserInputError
from adfq_sim.hooks import attached
from adfq_sim.quant.options import QuantConfig
from adfq_sim.quant.recipes import Recipe, spec, uniform_everywhere

# Clip candidates of the reference implementation (percentile p: the range [(100 - p)-th, p-th]).
REPQ_PERCENTILES = (99.9, 99.99, 99.999)
# (LayerNorm, the linear layer it feeds), as attribute paths inside one module: ViT / DeiT / Swin
# blocks, and Swin's patch merging.
FOLD_PAIRS = (("norm1", "attn.qkv"), ("norm2", "mlp.fc1"), ("norm", "reduction"))
# A fold must reproduce its block's float output to this fraction of the output's largest magnitude,
# checked on this many calibration images.
EQUIVALENCE_RTOL = 1e-4
CHECK_IMAGES = 8

log = logging.getLogger("adfq_sim")


@dataclasses.dataclass(frozen=True)
class _Pair:
    """A LayerNorm and the linear layer it feeds, both inside `owner` (a block, a patch merging)."""

    name: str  # the norm's
    linear_path: str  # the linear layer's, inside owner
    owner: nn.Module
    norm: nn.LayerNorm
    linear: nn.Linear


def _fold_pairs(model: nn.Module) -> list[_Pair]:
    pairs = []
    for name, module in model.named_modules():
        for norm_attr, linear_path in FOLD_PAIRS:
            norm = getattr(module, norm_attr, None)
            try:
                linear = module.get_submodule(linear_path)
            except AttributeError:
                continue
            if norm is None or not isinstance(linear, nn.Linear):
                continue
            where = f"{name}.{norm_attr}" if name else norm_attr
            if not isinstance(norm, nn.LayerNorm) or norm.normalized_shape != (linear.in_features,):
                raise UserInputError(f"repq: {where} ({type(norm).__name__}) is not a LayerNorm over the "
                                     f"{linear.in_features} input features of {linear_path}")
            pairs.append(_Pair(where, linear_path, module, norm, linear))
    if not pairs:
        raise UserInputError("repq: no LayerNorm feeding a qkv / fc1 / reduction layer (norm1 + attn.qkv, "
                             "norm2 + mlp.fc1, norm + reduction) was found")
    return pairs


@torch.no_grad()
def _channel_ranges(model: nn.Module, norms: list[nn.LayerNorm], batches: Sequence[torch.Tensor]
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel min / max of each norm's output (last dim) over the calibration batches."""
    lows: list[torch.Tensor | None] = [None] * len(norms)
    highs: list[torch.Tensor | None] = [None] * len(norms)

    def hook(index: int):
        def record(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            flat = out.detach().reshape(-1, out.shape[-1]).double()
            lo, hi = flat.amin(dim=0), flat.amax(dim=0)
            lows[index] = lo if lows[index] is None else torch.minimum(lows[index], lo)
            highs[index] = hi if highs[index] is None else torch.maximum(highs[index], hi)
        return record

    with attached(norm.register_forward_hook(hook(i)) for i, norm in enumerate(norms)):
        for images in batches:
            model(images)
    return list(zip(lows, highs))


@torch.no_grad()
def _record_owners(model: nn.Module, owners: list[nn.Module], images: torch.Tensor) -> dict[int, tuple]:
    """Each owner's (args, kwargs, output) on `images`, to check its folds against."""
    records: dict[int, tuple] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        records.setdefault(id(module), (args, kwargs, out))

    with attached(owner.register_forward_hook(record, with_kwargs=True) for owner in owners):
        model(images)
    return records


@torch.no_grad()
def _relative_error(owner: nn.Module, record: tuple) -> float:
    args, kwargs, expected = record
    error = float((owner(*args, **kwargs) - expected).abs().max())
    return error / max(float(expected.abs().max()), 1e-12)


@torch.no_grad()
def _fold(norm: nn.LayerNorm, linear: nn.Linear, lo: torch.Tensor, hi: torch.Tensor, align_offsets: bool) -> None:
    width = hi - lo
    positive = width > 0
    mean_width = width[positive].mean() if bool(positive.any()) else torch.ones((), dtype=width.dtype)
    # A constant channel keeps its scale (r = 1) and is only shifted.
    r = torch.where(positive, width / mean_width, torch.ones_like(width))
    t = (lo / r).mean() - lo / r if align_offsets else torch.zeros_like(r)
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(r)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(r)
    weight = linear.weight.double() * r
    bias = linear.bias.double() if linear.bias is not None else weight.new_zeros(linear.out_features)
    dtype = linear.weight.dtype
    norm.weight = nn.Parameter((gamma / r).to(dtype))
    norm.bias = nn.Parameter((beta / r + t).to(dtype))
    linear.weight = nn.Parameter(weight.to(dtype))
    linear.bias = nn.Parameter((bias - weight @ t).to(dtype))


def reparameterize(float_model: nn.Module, calib_batches: Sequence[torch.Tensor]) -> nn.Module:
    """RepQ-ViT's `prepare` hook: an FP32-equivalent copy whose post-LayerNorm channels share one range.

    The caller's model is not modified. Each fold is checked on the module holding it (a few calibration
    images): where the norm's output reaches the linear layer through zero padding (Swin windows at a
    resolution the window does not divide), only the scales fold (padding stays zero) and a warning
    says so; where even that changes the output (a post-norm block), the model is refused.
    """
    if not calib_batches:
        raise UserInputError("repq: calibration images are required")
    model = copy.deepcopy(float_model).eval()
    pairs = _fold_pairs(model)
    ranges = _channel_ranges(model, [pair.norm for pair in pairs], calib_batches)
    owners = list({id(pair.owner): pair.owner for pair in pairs}.values())
    records = _record_owners(model, owners, calib_batches[0][:CHECK_IMAGES])
    for pair, (lo, hi) in zip(pairs, ranges):
        original = (pair.norm.weight, pair.norm.bias, pair.linear.weight, pair.linear.bias)
        for align_offsets in (True, False):
            _fold(pair.norm, pair.linear, lo, hi, align_offsets)
            error = _relative_error(pair.owner, records[id(pair.owner)])
            if error <= EQUIVALENCE_RTOL:
                break
            pair.norm.weight, pair.norm.bias, pair.linear.weight, pair.linear.bias = original
        else:
            raise UserInputError(f"repq: folding {pair.name} changes the float output (relative error "
                                 f"{error:.3g}): the norm does not feed {pair.linear_path} directly")
        if not align_offsets:
            log.warning("repq: %s: only the channel scales are folded; the offsets do not fold exactly "
                        "(zero padding before %s?)", pair.name, pair.linear_path)
    return model


def repq_recipe(quant: QuantConfig) -> Recipe:
    """The `repq` method: reparameterize, then searched uniform ranges everywhere and log-sqrt2 softmax."""
    searched = {"observer": "search", "percentiles": REPQ_PERCENTILES}
    recipe = uniform_everywhere("repq", spec("uniform", **searched),
                                probs=spec("log", base="sqrt2", delta_init="search"))
    return dataclasses.replace(recipe, weights=spec("uniform", granularity="channel", **searched),
                               prepare=reparameterize)
