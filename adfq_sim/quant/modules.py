"""Quantized drop-in modules: every matrix multiplication sees quantized inputs and weights.

They hold the float module's parameters by reference to a copy made by QuantModel, plus one
quantizer per operand; they never compute a statistic of the current batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from adfq_sim.quant.quantizers import Quantizer


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, act_q: Quantizer, weight_q: Quantizer) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.act_q = act_q
        self.weight_q = weight_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_q(x), self.weight_q(self.weight), self.bias)


class QuantConv2d(nn.Module):
    """The patch embedding: a strided convolution, i.e. a GEMM over non-overlapping patches."""

    def __init__(self, conv: nn.Conv2d, act_q: Quantizer, weight_q: Quantizer) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("only plain convolutions (groups=1, dilation=1) are supported")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding = conv.stride, conv.padding
        self.act_q = act_q
        self.weight_q = weight_q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.act_q(x), self.weight_q(self.weight), self.bias, self.stride, self.padding)


class QuantAttention(nn.Module):
    """timm's Attention with both matmuls explicit and their four operands quantized.

    Q and K are quantized before the 1/sqrt(d) scale, which is applied to the product (in the integer
    program it folds into the requantization constant). With `keep_probs` set, the softmax output
    (before its quantizer) of the last forward is kept in `last_probs`: ASMO's attention-map loss
    reads it.
    """

    def __init__(self, attn: Attention, qkv: QuantLinear, proj: QuantLinear,
                 q_q: Quantizer, k_q: Quantizer, v_q: Quantizer, probs_q: Quantizer) -> None:
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ValueError("gated attention is not supported")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.attn_dim = attn.num_heads * attn.head_dim
        self.qkv, self.proj = qkv, proj
        self.q_norm, self.k_norm, self.norm = attn.q_norm, attn.k_norm, attn.norm
        self.q_q, self.k_q, self.v_q, self.probs_q = q_q, k_q, v_q, probs_q
        self.keep_probs = False
        self.last_probs: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("attention masks are not supported by the quantized ViT attention")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        scores = (self.q_q(q) @ self.k_q(k).transpose(-2, -1)) * self.scale
        probs = scores.softmax(dim=-1)
        self.last_probs = probs if self.keep_probs else None
        out = self.probs_q(probs) @ self.v_q(v)
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj(self.norm(out))
