"""A timm Swin Transformer (v1: `swin_*`) as integer ops.

Image -> patches -> patch embedding -> its LayerNorm (onto the residual stream) -> stages: patch merging
(2x2 gather, LayerNorm, reduction; stages after the first) then blocks (`export_block` with a
`WindowLayout`: the cyclic shift, padding and window partition as gathers, the relative position bias
on the score grid, the shifted-window mask) -> final LayerNorm -> mean over tokens -> head.
"""

from __future__ import annotations

from typing import Iterable

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from adfq_sim.intsim.export_block import Graph, WindowLayout, emit_block
from adfq_sim.intsim.export_layers import (check_saturation, gemm, layernorm, requant, residual_scales, to_residual,
                                           token_codes, uniform_tensor)
from adfq_sim.intsim.export_vit import embed_patches
from adfq_sim.intsim.ops import Gather, LayerNorm, Linear, MeanPool, Requantize, Slice
from adfq_sim.intsim.program import IntegerProgram, UnsupportedProgramError
from adfq_sim.intsim.windows import patch_merging, window_partition
from adfq_sim.quant.modules import QuantLinear
from adfq_sim.quant.swin_modules import QuantWindowAttention


def _layout(blk: nn.Module) -> WindowLayout:
    """Where the block's attention looks: its windows, the shift's mask (timm's own: 0 / -100 per query
    and key of a window) and the relative position bias."""
    height, width = blk.input_resolution
    (wh, ww), shift = tuple(blk.window_size), tuple(blk.shift_size)
    partition, reverse = window_partition(height, width, (wh, ww), shift)
    mask = None
    if any(shift):
        padded = torch.zeros(1, -(-height // wh) * wh, -(-width // ww) * ww, 1)
        values = blk.attn_mask if blk.attn_mask is not None else blk.get_attn_mask(padded)
        mask = (values != 0).numpy()
    bias = blk.attn.relative_position_bias()[0].detach().double().numpy()
    return WindowLayout(partition, reverse, len(partition) // (wh * ww), wh * ww, mask, bias)


def _check(model: SwinTransformer) -> None:
    if model.global_pool != "avg" or not isinstance(model.head.fc, QuantLinear):
        raise UnsupportedProgramError("export supports Swin with average pooling into a linear head")
    if not isinstance(model.patch_embed.norm, nn.LayerNorm):
        raise UnsupportedProgramError("export supports Swin with a LayerNorm after the patch embedding")
    for s, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            if not isinstance(blk.attn, QuantWindowAttention):
                raise UnsupportedProgramError(f"layers.{s}.blocks.{j}: unsupported attention {type(blk.attn).__name__}")


def _residual_points(model: SwinTransformer) -> list[nn.Module]:
    """The modules whose input is a residual-stream tensor, in execution order: the embedding's
    LayerNorm (its input is the embedding), each patch merging, each block and its mid point, the final
    LayerNorm. Each residual tensor takes the scale of the point that reads it."""
    points = [model.patch_embed.norm]
    for stage in model.layers:
        points += [] if isinstance(stage.downsample, nn.Identity) else [stage.downsample]
        points += [m for blk in stage.blocks for m in (blk, blk.norm2)]
    return points + [model.norm]


def _merge(g: Graph, merging: nn.Module, name: str, x: str, size: tuple[int, int], s_in: float, s_out: float,
           out: str) -> tuple[int, int]:
    """Patch merging: 2x2 neighbours gathered (zeros past an odd edge), LayerNorm, the reduction onto
    the residual stream at s_out. Returns the merged size."""
    height, width = size
    index = patch_merging(height, width)
    dim = merging.norm.normalized_shape[0]
    merged = g.residual(f"{name}.merged", len(index), dim, verified=False)
    g.add(Gather(f"{name}.merge", x, merged, index))
    norm = layernorm(merging.norm, s_in)
    codes = token_codes(merging.reduction.act_q, norm.acc_frac, f"{name}.norm")
    form = merging.reduction.act_q.integer_form()
    reduction_in = g.codes(f"{name}.reduction_in", form, form["code_max"], len(index), dim)
    outliers = g.outliers(reduction_in, codes, len(index), dim)
    g.add(LayerNorm(f"{name}.norm", merged, reduction_in, outliers, norm, codes))
    reduction, acc_scale, bias = gemm(merging.reduction, f"{name}.reduction", ("uniform-tensor", "ppoq"), bias_out=True)
    rule = check_saturation(to_residual(acc_scale / s_out, bias / s_out), reduction.saturated, f"{name}.reduction")
    g.residual(out, len(index), reduction.weight.shape[0])
    g.add(Linear(f"{name}.reduction", reduction_in, outliers, reduction,
                 [Slice(out, 0, reduction.weight.shape[0], rule)], f"{name}.to_residual"))
    return -(-height // 2), -(-width // 2)


def _head(g: Graph, model: SwinTransformer, x: str, rows: int, s_in: float) -> IntegerProgram:
    """Final LayerNorm, the mean over tokens (exact int64 sum of the LayerNorm's acc, one rounding shift
    into int32, then the head quantizer's rule), the head."""
    norm = layernorm(model.norm, s_in)
    dim = norm.channels
    acc = g.accumulator("norm_acc", rows, dim)
    g.add(LayerNorm("norm", x, acc, None, norm, None))
    fc = model.head.fc
    s_head, zp, qmax = uniform_tensor(fc.act_q, "head.fc.act_q")
    pre_shift = (rows - 1).bit_length()  # rows * |acc| < rows * 2**31 <= 2**(31 + pre_shift)
    rule = requant(2.0 ** (pre_shift - norm.acc_frac) / (rows * s_head), zp, 0, qmax)
    head_in = g.codes("head_in", fc.act_q.integer_form(), qmax, 1, dim)
    g.add(MeanPool("head.pool", acc, head_in, pre_shift, rule))
    head, head_scale, _ = gemm(fc, "head", ("uniform-tensor",))
    logits = g.accumulator("logits", 1, head.weight.shape[0])
    g.add(Linear("head", head_in, None, head, [Slice(logits, 0, head.weight.shape[0], None)], ""))
    return g.program("swin", logits, head_scale)


def export_swin(model: SwinTransformer, calib_batches: Iterable[torch.Tensor]) -> IntegerProgram:
    """The IntegerProgram of a calibrated Swin (a QuantModel's model); calib_batches set the residual scales."""
    _check(model)
    scales = residual_scales(model, _residual_points(model), calib_batches)
    g = Graph()
    height, width = (size // patch for size, patch in zip(model.patch_embed.img_size, model.patch_embed.patch_size))
    dim = model.patch_embed.norm.normalized_shape[0]
    embedded = g.residual("patch_embed.out", height * width, dim)
    embed_patches(g, model.patch_embed.proj, tuple(model.patch_embed.img_size), embedded,
                  lambda acc_scale, bias: to_residual(acc_scale / scales[0], bias / scales[0]), "patch_embed.to_norm")
    norm = layernorm(model.patch_embed.norm, scales[0])
    acc = g.accumulator("patch_embed.norm_acc", height * width, dim)
    g.add(LayerNorm("patch_embed.norm", embedded, acc, None, norm, None))
    point = 1  # the residual point that reads x
    x = g.residual("residual_in", height * width, dim)
    g.add(Requantize("patch_embed.to_residual", acc, x, to_residual(2.0 ** -norm.acc_frac / scales[point])))
    for s, stage in enumerate(model.layers):
        if not isinstance(stage.downsample, nn.Identity):
            merged = f"layers.{s}.residual_in"
            height, width = _merge(g, stage.downsample, f"layers.{s}.downsample", x, (height, width), scales[point],
                                   scales[point + 1], merged)
            x, point = merged, point + 1
        for j, blk in enumerate(stage.blocks):
            if tuple(blk.input_resolution) != (height, width):
                raise UnsupportedProgramError(f"layers.{s}.blocks.{j}: input resolution {tuple(blk.input_resolution)} "
                                              f"does not follow the image's ({height}, {width})")
            x = emit_block(g, blk, f"layers.{s}.blocks.{j}", x, height * width, tuple(scales[point:point + 3]),
                           _layout(blk))
            point += 2
    return _head(g, model, x, height * width, scales[point])
