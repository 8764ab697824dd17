"""QuantModel: a fake-quant copy of a timm ViT / DeiT / Swin built from a recipe, calibrated once.

Every matrix multiplication gets quantized inputs and weights: patch embedding, qkv, Q.K^T,
softmax.V, proj, fc1, fc2, head, and Swin's patch-merging reduction. LayerNorm, softmax, GELU, residual
adds and Swin's relative position bias and window mask stay float (the paper's protocol). A module the
recipe cannot place is refused, never silently left in float.
"""

from __future__ import annotations

import copy
from typing import Iterable, Iterator, Optional

import torch
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from adfq_sim.errors import UserInputError
from adfq_sim.progress import bar
from adfq_sim.quant.modules import QuantAttention, QuantConv2d, QuantLinear
from adfq_sim.quant.quantizers import Quantizer
from adfq_sim.quant.recipes import Recipe
from adfq_sim.quant.swin_modules import QuantWindowAttention

# Module-name suffix -> input activation role of the GEMMs outside attention (every weight takes the
# recipe's one weight spec).
_GEMM_ROLES = {
    "patch_embed.proj": "embed_in",
    "mlp.fc1": "fc1_in",
    "mlp.fc2": "fc2_in",
    "head": "head_in",
    "head.fc": "head_in",  # Swin
    "downsample.reduction": "reduction_in",  # Swin patch merging
}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _role_for(name: str) -> str | None:
    for suffix, role in _GEMM_ROLES.items():
        if name == suffix or name.endswith("." + suffix):
            return role
    return None


class QuantModel(nn.Module):
    """Fake-quant model for one (recipe, w_bits, a_bits). The float model passed in is not modified."""

    def __init__(self, float_model: nn.Module, recipe: Recipe, w_bits: int, a_bits: int) -> None:
        super().__init__()
        self.recipe, self.w_bits, self.a_bits = recipe, w_bits, a_bits
        self.model = copy.deepcopy(float_model).eval()
        self.optimization_report: Optional[list] = None
        self._quantize_modules()

    def _gemm(self, module: nn.Module, act_role: str) -> nn.Module:
        """The GEMM with its input quantizer (by role) and its weight quantizer, calibrated on the weight."""
        act_q = self.recipe.activation(act_role, self.a_bits)
        weight_q = self.recipe.weight(self.w_bits)
        weight_q.calibrate_static(module.weight)
        wrapper = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        return wrapper(module, act_q, weight_q)

    def _quantize_modules(self) -> None:
        replacements: dict[str, nn.Module] = {}
        handled: set[str] = set()
        for name, module in self.model.named_modules():
            if isinstance(module, (Attention, WindowAttention)):
                wrapper = QuantWindowAttention if isinstance(module, WindowAttention) else QuantAttention
                attn = wrapper(
                    module,
                    qkv=self._gemm(module.qkv, "qkv_in"),
                    proj=self._gemm(module.proj, "proj_in"),
                    q_q=self.recipe.activation("q", self.a_bits),
                    k_q=self.recipe.activation("k", self.a_bits),
                    v_q=self.recipe.activation("v", self.a_bits),
                    probs_q=self.recipe.activation("probs", self.a_bits),
                )
                replacements[name] = attn
                handled.update({f"{name}.qkv", f"{name}.proj"})
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and name not in handled:
                role = _role_for(name)
                if role is None:
                    raise UserInputError(
                        f"model: cannot quantize {name} ({type(module).__name__}); supported: ViT / DeiT / Swin "
                        "(patch_embed.proj, attention qkv/proj, mlp.fc1/fc2, head, head.fc, "
                        "downsample.reduction)")
                replacements[name] = self._gemm(module, role)
            elif "attention" in type(module).__name__.lower():
                raise UserInputError(f"model: unsupported attention module {name} ({type(module).__name__})")
        for name, module in replacements.items():
            _set_submodule(self.model, name, module)

    def named_quantizers(self) -> Iterator[tuple[str, Quantizer]]:
        for name, module in self.model.named_modules():
            if isinstance(module, Quantizer):
                yield name, module

    def outlier_counts(self) -> dict[str, tuple[int, int]]:
        """Per outlier-aware quantizer: (values on the sparse path, values seen) since the last
        `reset_outlier_counters`; counts of separate evaluations add up."""
        return {name: (q.outlier_count, q.element_count) for name, q in self.named_quantizers()
                if hasattr(q, "outlier_count")}

    def calib_outlier_ratios(self) -> dict[str, float | None]:
        """Per outlier-aware quantizer: fraction of the calibration values it put on the sparse path."""
        return {name: q.calib_outlier_ratio for name, q in self.named_quantizers() if hasattr(q, "outlier_count")}

    def reset_outlier_counters(self) -> None:
        for _, q in self.named_quantizers():
            if hasattr(q, "reset_counters"):
                q.reset_counters()

    def activation_quantizers(self) -> list[Quantizer]:
        return [q for name, q in self.named_quantizers() if not name.endswith("weight_q")]

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor], total: Optional[int] = None) -> None:
        """Observe float activations over the calibration batches, then freeze every quantizer."""
        quantizers = self.activation_quantizers()
        for q in quantizers:
            q.begin_calibration()
        try:
            for images in bar(batches, f"calibrate {self.recipe.name} w{self.w_bits}a{self.a_bits}", total,
                              unit="batch", leave=False):
                self.model(images)
        finally:
            for q in quantizers:
                q.calibrating = False
        for q in quantizers:
            q.end_calibration()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
