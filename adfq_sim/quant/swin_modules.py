"""Quantized Swin window attention: timm's `WindowAttention` with both matmuls explicit.

The operands are quantized exactly as in `QuantAttention` (the same attribute names and the same
`keep_probs` / `last_probs` protocol), so recipes and ASMO treat ViT and Swin attention alike. The
relative position bias and the shifted-window mask are added to the scores in float before the
softmax, like the other non-GEMM ops.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.swin_transformer import WindowAttention
from torch import nn

from adfq_sim.quant.modules import QuantLinear
from adfq_sim.quant.quantizers import Quantizer


class QuantWindowAttention(nn.Module):
    """Window attention over `num_windows * B` windows of `N` tokens, mirroring timm's forward.

    Q and K are quantized before the 1/sqrt(d) scale, which is applied to the product (timm's two paths,
    `q * scale` and SDPA, are the same function). The mask holds 0 / -100 per pair of tokens of each
    of the image's windows (shape [num_windows, N, N]); it depends on the window's position only, so an
    image's output never depends on the rest of its batch.
    """

    def __init__(self, attn: WindowAttention, qkv: QuantLinear, proj: QuantLinear,
                 q_q: Quantizer, k_q: Quantizer, v_q: Quantizer, probs_q: Quantizer) -> None:
        super().__init__()
        self.num_heads, self.scale, self.window_area = attn.num_heads, attn.scale, attn.window_area
        # head_dim may be set independently of dim // num_heads; the qkv width is the truth.
        self.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        self.relative_position_bias_table = attn.relative_position_bias_table
        self.register_buffer("relative_position_index", attn.relative_position_index, persistent=False)
        self.qkv, self.proj = qkv, proj
        self.q_q, self.k_q, self.v_q, self.probs_q = q_q, k_q, v_q, probs_q
        self.keep_probs = False
        self.last_probs: Optional[torch.Tensor] = None

    def relative_position_bias(self) -> torch.Tensor:
        """[1, heads, N, N] bias gathered from the learned table (the same lookup as timm)."""
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = (self.q_q(q) @ self.k_q(k).transpose(-2, -1)) * self.scale + self.relative_position_bias()
        if mask is not None:
            num_win = mask.shape[0]
            scores = scores.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.num_heads, N, N)
        probs = scores.softmax(dim=-1)
        self.last_probs = probs if self.keep_probs else None
        out = self.probs_q(probs) @ self.v_q(v)
        return self.proj(out.transpose(1, 2).reshape(B_, N, self.num_heads * self.head_dim))
