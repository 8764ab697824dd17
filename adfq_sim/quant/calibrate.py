"""From a float model and calibration images to a calibrated QuantModel, for any recipe."""

from __future__ import annotations

from typing import Sequence

import torch

from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.recipes import Recipe


def quantize_model(float_model: torch.nn.Module, recipe: Recipe, w_bits: int, a_bits: int,
                   calib_batches: Sequence[torch.Tensor]) -> QuantModel:
    """prepare (optional reparameterization) -> wrap -> observe + freeze -> optimize (optional)."""
    model = recipe.prepare(float_model, calib_batches) if recipe.prepare else float_model
    qmodel = QuantModel(model, recipe, w_bits, a_bits)
    qmodel.calibrate(calib_batches, total=len(calib_batches))
    if recipe.optimize:
        # The optimizer's float reference is the model actually quantized (after `prepare`). What it
        # returns (e.g. ASMO's per-module losses) is kept for results.json.
        # Optimizers learn by gradient even when the caller evaluates under torch.no_grad().
        with torch.enable_grad():
            qmodel.optimization_report = recipe.optimize(qmodel, model, calib_batches)
    return qmodel.eval()
