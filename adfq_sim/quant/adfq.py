"""The ADFQ-ViT method as a recipe: PPOQ on post-LayerNorm, SLQ on post-GELU, log-sqrt2 softmax, ASMO.

Mapping per block (docs/references.md, ADFQ-ViT): qkv input and fc1 input: PPOQ; fc2 input: SLQ; Q, K, V, proj input,
patch-embedding and head inputs: uniform per tensor (range by MSE search); softmax output: log-sqrt2
per tensor; weights: uniform per output channel, each channel's clipping by MSE search (their
rounding then learned by ASMO). Each component can
be switched off for ablations (`quant.adfq.ppoq / slq / asmo`): PPOQ and SLQ fall back to the uniform
per-tensor quantizer with the same range search.
"""

from __future__ import annotations

from functools import partial

from adfq_sim.quant.asmo import AsmoSettings, asmo_optimize
from adfq_sim.quant.options import QuantConfig
from adfq_sim.quant.recipes import ACTIVATION_ROLES, Recipe, spec



def adfq_recipe(quant: QuantConfig) -> Recipe:
    a = quant.adfq
    uniform = spec("uniform", observer="search")
    activations = {role: uniform for role in ACTIVATION_ROLES}
    activations["probs"] = spec("log", base="sqrt2", delta_init="max")
    if a.ppoq:
        activations["qkv_in"] = spec("ppoq", alpha=a.alpha_qkv, outliers=a.outliers)
        activations["fc1_in"] = spec("ppoq", alpha=a.alpha_fc1, outliers=a.outliers)
    if a.slq:
        activations["fc2_in"] = spec("slq", base=a.log_base)
    optimize = None
    if a.asmo:
        optimize = partial(asmo_optimize, settings=AsmoSettings.from_config(a))
    weights = spec("uniform", granularity="channel", observer="clip_search")
    return Recipe("adfq", weights, activations, optimize=optimize)
