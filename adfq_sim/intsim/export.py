"""Export a calibrated QuantModel to an IntegerProgram: the model family decides the op graph.

ViT / DeiT (`export_vit`) and Swin (`export_swin`) emit their own embedding and head around the shared
transformer block (`export_block`); every layer's constants come from its quantizers (`export_layers`).
A model or a quantizer placement the integer program cannot express is refused with
UnsupportedProgramError naming it.
"""

from __future__ import annotations

from typing import Iterable

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from adfq_sim.intsim.export_swin import export_swin
from adfq_sim.intsim.export_vit import export_vit
from adfq_sim.intsim.program import IntegerProgram, UnsupportedProgramError
from adfq_sim.quant.model import QuantModel


def export(qmodel: QuantModel, calib_batches: Iterable[torch.Tensor]) -> IntegerProgram:
    """The IntegerProgram of a calibrated ViT / DeiT / Swin QuantModel; calib_batches set the residual
    stream's scales (a list: it is read once per model pass)."""
    model = qmodel.model
    if isinstance(model, VisionTransformer):
        return export_vit(model, calib_batches)
    if isinstance(model, SwinTransformer):
        return export_swin(model, calib_batches)
    raise UnsupportedProgramError(f"export supports timm ViT / DeiT and Swin, got {type(model).__name__}")
