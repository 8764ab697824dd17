"""Quantization methods as data: which quantizer sits on which tensor, with which init.

A recipe maps every tensor role of a ViT block (see ACTIVATION_ROLES) to a QuantizerSpec, and may add
two steps around calibration: `prepare` (an FP32-equivalent reparameterization of the float model that
needs calibration data, e.g. RepQ-ViT) and `optimize` (after calibration, e.g. ASMO or PTQ4ViT's
search). Adding a method means adding a recipe builder to `quant.methods` (its options and name to
`quant.options`; for a new format, a quantizer kind registered with `register_kind`), never editing
the quantized modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from adfq_sim.quant.observers import (SEARCH_PERCENTILES, ChannelMSEObserver, MinMaxObserver, PercentileMseObserver,
                                     PercentileObserver)
from adfq_sim.quant.ppoq import PerPatchOutlierQuantizer
from adfq_sim.quant.quantizers import GELU_MINIMUM, LogQuantizer, Quantizer, UniformQuantizer
from adfq_sim.quant.twin_uniform import TwinUniformQuantizer

# Activation roles: the inputs of every matrix multiplication in a ViT (and a Swin).
ACTIVATION_ROLES = (
    "embed_in",   # patch-embedding input (the normalised image)
    "qkv_in",     # post-LayerNorm-1
    "q", "k",     # Q . K^T operands
    "probs", "v",  # softmax . V operands
    "proj_in",    # attention output
    "fc1_in",     # post-LayerNorm-2
    "fc2_in",     # post-GELU
    "head_in",    # classifier input (post final norm, pooled)
    "reduction_in",  # Swin patch-merging reduction input (post-LayerNorm, 2x2 tokens concatenated)
)

QuantizerFactory = Callable[..., Quantizer]
QUANTIZER_KINDS: dict[str, QuantizerFactory] = {}


def register_kind(name: str) -> Callable[[QuantizerFactory], QuantizerFactory]:
    """Register `factory(bits, **options) -> Quantizer` under a kind name usable in QuantizerSpec."""
    def decorate(factory: QuantizerFactory) -> QuantizerFactory:
        QUANTIZER_KINDS[name] = factory
        return factory
    return decorate


@register_kind("uniform")
def _uniform(bits: int, granularity: str = "tensor", observer: str = "minmax", percentile: float | None = None,
             percentiles: tuple[float, ...] = SEARCH_PERCENTILES) -> Quantizer:
    """observer: minmax | percentile (clip at one percentile) | search (the percentile clip range with
    the smallest MSE, per tensor or per channel) | clip_search (per-channel min/max shrunk by the
    clip ratio with the smallest MSE; for weights)."""
    observers = {"minmax": MinMaxObserver, "percentile": lambda: PercentileObserver(percentile),
                 "search": lambda: PercentileMseObserver(bits, percentiles),
                 "clip_search": lambda: ChannelMSEObserver(bits)}
    return UniformQuantizer(bits, granularity, observers[observer]())


@register_kind("log")
def _log(bits: int, base: str = "sqrt2", shift: float = 0.0, delta_init: str = "max") -> Quantizer:
    return LogQuantizer(bits, base, shift, delta_init)


@register_kind("slq")
def _slq(bits: int, base: str = "sqrt2") -> Quantizer:
    """Shift-Log2 Quantizer (ADFQ-ViT): shift by the GELU minimum, log levels, delta by search."""
    return LogQuantizer(bits, base=base, shift=GELU_MINIMUM, delta_init="search")


@register_kind("ppoq")
def _ppoq(bits: int, alpha: float, outliers: str = "int16") -> Quantizer:
    return PerPatchOutlierQuantizer(bits, alpha, outliers)


@register_kind("twin_uniform")
def _twin_uniform(bits: int, mode: str = "softmax", lower: float | None = None) -> Quantizer:
    return TwinUniformQuantizer(bits, mode, lower)


@dataclass(frozen=True)
class QuantizerSpec:
    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, bits: int) -> Quantizer:
        return QUANTIZER_KINDS[self.kind](bits, **dict(self.options))


def spec(kind: str, **options: Any) -> QuantizerSpec:
    return QuantizerSpec(kind, tuple(sorted(options.items())))


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: QuantizerSpec
    activations: Mapping[str, QuantizerSpec]
    # prepare(float_model, calib_batches) -> an FP32-equivalent model to quantize instead.
    prepare: Optional[Callable] = field(default=None, compare=False)
    # optimize(qmodel, float_model, calib_batches) -> None: refines the calibrated quantizers in place;
    # float_model is the FP32 model that was quantized (the prepared one, if `prepare` is set).
    optimize: Optional[Callable] = field(default=None, compare=False)

    def activation(self, role: str, bits: int) -> Quantizer:
        return self.activations[role].build(bits)

    def weight(self, bits: int) -> Quantizer:
        return self.weights.build(bits)


WEIGHT_PER_CHANNEL_MINMAX = spec("uniform", granularity="channel", observer="minmax")


def uniform_everywhere(name: str, activation: QuantizerSpec, **overrides: QuantizerSpec) -> Recipe:
    """A recipe with one activation spec on every role except the ones overridden."""
    activations = {role: overrides.get(role, activation) for role in ACTIVATION_ROLES}
    return Recipe(name, WEIGHT_PER_CHANNEL_MINMAX, activations)
