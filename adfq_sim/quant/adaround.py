"""AdaRound-style learned weight rounding (Nagel et al. 2020), used by ASMO.

Each weight's code is floor(w / s) + h(V) with h a rectified sigmoid in [0, 1] learned per weight;
a regulariser pushes h to 0 or 1. After learning, the hard rounding is baked into the weight tensor
as on-grid values, so the unchanged weight quantizer maps it back to exactly the learned codes.
"""

from __future__ import annotations

import torch
from torch import nn

from adfq_sim.quant.quantizers import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1  # rectified-sigmoid stretch (AdaRound's constants)


class AdaRoundWeight(nn.Module):
    """Stands in for a frozen per-channel UniformQuantizer while its weight's rounding is learned."""

    def __init__(self, quantizer: UniformQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        self.quantizer = quantizer
        scaled = weight.detach() / quantizer.scale.detach()
        self.register_buffer("floor", torch.floor(scaled))
        frac = (scaled - self.floor).clamp(1e-4, 1 - 1e-4)
        # h(V) = frac at the start: the soft weight equals the float weight (inside the range).
        self.v = nn.Parameter(torch.logit((frac - GAMMA) / (ZETA - GAMMA)))

    def rounding(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        codes = torch.clamp(self.floor + self.rounding() + q.zero_point, 0, q.qmax)
        return (codes - q.zero_point) * q.scale.detach()

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.rounding() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """On-grid weights with the learned rounding decided (h >= 0.5 rounds up)."""
        q = self.quantizer
        codes = torch.clamp(self.floor + (self.rounding() >= 0.5).float() + q.zero_point, 0, q.qmax)
        return (codes - q.zero_point) * q.scale
