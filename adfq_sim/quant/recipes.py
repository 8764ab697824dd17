"""Quantization methods as data: which quantizer sits on which tensor, with which init.

A recipe maps every tensor role of a ViT block (see ROLES) to a QuantizerSpec. Adding a method means
adding a recipe here (and, for a new format, a quantizer class), never editing the quantized modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from adfq_sim.config import QuantConfig
from adfq_sim.quant.observers import MinMaxObserver, PercentileObserver
from adfq_sim.quant.quantizers import Quantizer, UniformQuantizer

# Activation roles: the inputs of every matrix multiplication in a ViT.
ACTIVATION_ROLES = (
    "embed_in",   # patch-embedding input (the normalised image)
    "qkv_in",     # post-LayerNorm-1
    "q", "k",     # Q . K^T operands
    "probs", "v",  # softmax . V operands
    "proj_in",    # attention output
    "fc1_in",     # post-LayerNorm-2
    "fc2_in",     # post-GELU
    "head_in",    # classifier input (post final norm, pooled)
)
# Weight roles: every weight matrix (always one spec, per output channel, in these recipes).
WEIGHT_ROLES = ("embed_w", "qkv_w", "proj_w", "fc1_w", "fc2_w", "head_w")


@dataclass(frozen=True)
class QuantizerSpec:
    kind: str          # "uniform"
    granularity: str   # "tensor" | "channel"
    observer: str      # "minmax" | "percentile"
    percentile: float | None = None

    def build(self, bits: int) -> Quantizer:
        if self.kind != "uniform":
            raise ValueError(f"unknown quantizer kind {self.kind!r}")
        observer = MinMaxObserver() if self.observer == "minmax" else PercentileObserver(self.percentile)
        return UniformQuantizer(bits, self.granularity, observer)


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: QuantizerSpec
    activations: dict[str, QuantizerSpec]

    def activation(self, role: str, bits: int) -> Quantizer:
        return self.activations[role].build(bits)

    def weight(self, bits: int) -> Quantizer:
        return self.weights.build(bits)


WEIGHT_PER_CHANNEL_MINMAX = QuantizerSpec("uniform", "channel", "minmax")


def _minmax(quant: QuantConfig) -> Recipe:
    spec = QuantizerSpec("uniform", "tensor", "minmax")
    return Recipe("minmax", WEIGHT_PER_CHANNEL_MINMAX, {role: spec for role in ACTIVATION_ROLES})


def _percentile(quant: QuantConfig) -> Recipe:
    spec = QuantizerSpec("uniform", "tensor", "percentile", quant.percentile.percentile)
    return Recipe("percentile", WEIGHT_PER_CHANNEL_MINMAX, {role: spec for role in ACTIVATION_ROLES})


METHODS = {"minmax": _minmax, "percentile": _percentile}


def build_recipe(method: str, quant: QuantConfig) -> Recipe:
    return METHODS[method](quant)
