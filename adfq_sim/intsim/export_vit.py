"""A timm ViT / DeiT (class token, token pooling) as integer ops.

Image -> patches -> patch embedding (its bias on the residual scale) -> + class token and position codes
-> plain pre-norm blocks (`export_block`) -> the class token's row -> final LayerNorm -> head.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adfq_sim.formats import RESIDUAL_MAX
from adfq_sim.intsim.export_block import Graph, emit_block
from adfq_sim.intsim.export_layers import (gemm, layernorm, residual_scales, round_half_up, to_residual, token_codes,
                                           uniform_tensor)
from adfq_sim.intsim.ops import AddPositions, Gather, ImageInput, LayerNorm, Linear, Patchify, Requant, Slice
from adfq_sim.intsim.program import IntegerProgram, UnsupportedProgramError
from adfq_sim.quant.modules import QuantAttention, QuantConv2d


def check_patch_embedding(conv: nn.Module) -> None:
    if not isinstance(conv, QuantConv2d) or conv.stride != conv.weight.shape[2:] or conv.padding != (0, 0) \
            or conv.weight.shape[2] != conv.weight.shape[3]:
        raise UnsupportedProgramError("patch embedding must be a square, non-overlapping convolution")


def embed_patches(g: Graph, conv: QuantConv2d, image_size: tuple[int, int], out: str,
                  rule_of: Callable[[np.ndarray, np.ndarray], Requant], requant_name: str) -> None:
    """Image codes -> patches -> the patch embedding's output `out`, by the rule
    rule_of(accumulator scale, float bias)."""
    check_patch_embedding(conv)
    channels, height, width = conv.weight.shape[1], *image_size
    patch = int(conv.weight.shape[2])
    if height % patch or width % patch:
        raise UnsupportedProgramError(f"the image ({height}x{width}) is not a whole number of {patch}x{patch} patches")
    s_img, zp_img, qmax_img = uniform_tensor(conv.act_q, "patch_embed.proj.act_q")
    form = conv.act_q.integer_form()
    image = g.codes("embed_in", form, qmax_img, 1, channels * height * width)
    g.add(ImageInput("input", image, channels, height, width, s_img, zp_img, qmax_img))
    tokens = (height // patch) * (width // patch)
    patches = g.codes("patch_embed.patches", form, qmax_img, tokens, channels * patch * patch, verified=False)
    g.add(Patchify("patch_embed.patchify", image, patches, channels, height, width, patch))
    embed, embed_scale, embed_bias = gemm(conv, "patch_embed.proj", ("uniform-tensor",), bias_out=True)
    rule = rule_of(embed_scale, embed_bias)
    g.add(Linear("patch_embed", patches, None, embed, [Slice(out, 0, embed.weight.shape[0], rule)], requant_name))


def export_vit(model: VisionTransformer, calib_batches: Iterable[torch.Tensor]) -> IntegerProgram:
    """The IntegerProgram of a calibrated ViT / DeiT (a QuantModel's model) with a class token and token
    pooling; calib_batches set the residual scales."""
    if model.global_pool != "token" or model.cls_token is None or not isinstance(model.fc_norm, nn.Identity) \
            or not isinstance(model.norm_pre, nn.Identity) or model.no_embed_class or model.reg_token is not None:
        raise UnsupportedProgramError("export supports timm ViT / DeiT with a class token and token pooling")
    for i, blk in enumerate(model.blocks):
        attn, mlp = blk.attn, blk.mlp
        if not isinstance(attn, QuantAttention) or not all(
                isinstance(m, nn.Identity) for m in (blk.ls1, blk.ls2, attn.q_norm, attn.k_norm, attn.norm, mlp.norm)):
            raise UnsupportedProgramError(f"blocks.{i}: only plain ViT blocks (no layer scale, no q/k norm) are supported")
    points = [m for blk in model.blocks for m in (blk, blk.norm2)] + [model.norm]
    scales = residual_scales(model, points, calib_batches)
    s0 = scales[0]
    pos = model.pos_embed.detach().double().numpy()[0]
    cls = model.cls_token.detach().double().numpy()[0, 0]
    width = pos.shape[1]

    def residual_codes(v: np.ndarray) -> np.ndarray:
        return np.clip(round_half_up(v / s0), -RESIDUAL_MAX, RESIDUAL_MAX).astype(np.int32)

    g = Graph()
    patches = pos.shape[0] - 1
    emb = g.residual("patch_embed.out", patches, width, verified=False)
    embed_patches(g, model.patch_embed.proj, tuple(model.patch_embed.img_size), emb,
                  lambda acc_scale, bias: to_residual(acc_scale / s0, bias / s0), "embed_to_res")
    tokens = patches + 1
    x = g.residual("residual_in", tokens, width)
    g.add(AddPositions("embed_positions", emb, x, residual_codes(cls + pos[0])[None], residual_codes(pos[1:])))
    for i, blk in enumerate(model.blocks):
        x = emit_block(g, blk, f"blocks.{i}", x, tokens, (scales[2 * i], scales[2 * i + 1], scales[2 * i + 2]))
    token = g.residual("head_token", 1, width, verified=False)
    g.add(Gather("head.token", x, token, np.zeros((1, 1), np.int64)))  # token pooling: the class token alone
    norm = layernorm(model.norm, scales[-1])
    codes = token_codes(model.head.act_q, norm.acc_frac, "norm")
    head_in = g.codes("head_in", model.head.act_q.integer_form(), codes.out.qmax, 1, width)
    g.add(LayerNorm("norm", token, head_in, None, norm, codes))
    head, head_scale, _ = gemm(model.head, "head", ("uniform-tensor",))
    logits = g.accumulator("logits", 1, head.weight.shape[0])
    g.add(Linear("head", head_in, None, head, [Slice(logits, 0, head.weight.shape[0], None)], ""))
    return g.program("vit", logits, head_scale)
