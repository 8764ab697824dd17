"""IntegerProgram: every integer constant of a deployed ViT, and `export` from a calibrated QuantModel.

Prototype scope: ViT / DeiT with uniform quantizers only (activations per tensor, weights per output
channel: the `minmax` and `percentile` recipes); any other format is refused at export.

Choices fixed here, once:
- GEMM operands are codes minus zero-points; a weight layer's int32 bias is round_half_up(b / (s_in *
  s_w[n])), so it lands on the accumulator's own scale (no rescale before the add).
- Every rescale is a `Requant`: the dyadic rule of `dyadic.py` (round half up), per tensor or per
  output channel, clamped to the target's code range, the zero-point added after the rule.
- Residual stream: signed 16-bit codes (|r| <= 2**15 - 1, the LayerNorm input range), one scale per
  residual point (each block's input, its post-attention sum, the final norm's input), chosen as
  RESIDUAL_HEADROOM x the calibration maximum of |x| over 2**15 - 1. An add rescales both operands to
  the new point's scale (two dyadic rules) and clamps the sum to the 16-bit range.
- Class token and position embedding are residual codes at the first point's scale: (cls + pos[0]) is
  one code vector, pos[1:] codes are added to the requantized patch embedding.
- GELU: the fc1 accumulator (per-channel scale) is first requantized to one per-tensor scale, the
  finest channel's s_in * s_w, so that one breakpoint table (`gelu_constants`) serves the layer.
- Softmax input scale folds attention's 1/sqrt(d): s_q * s_k * scale.
- Every GEMM's accumulator bound is proven (`bounds.check_int32`) and stored as `acc_max`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from adfq_sim.intsim.bounds import INT32_MAX, check_int32, dense_bound
from adfq_sim.intsim.dyadic import dyadic
from adfq_sim.intsim.nonlinear_reference import (EXP_ONE_BITS, SOFTMAX_INPUT_MAX, GeluConstants,
                                                 LayerNormConstants, SoftmaxConstants, gelu_constants,
                                                 layernorm_constants, softmax_constants, uniform_output)
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.modules import QuantAttention, QuantConv2d, QuantLinear
from adfq_sim.quant.quantizers import UniformQuantizer

RESIDUAL_BITS = 16
RESIDUAL_MAX = (1 << (RESIDUAL_BITS - 1)) - 1
RESIDUAL_HEADROOM = 2.0  # one bit above the calibration maximum: test images may exceed it


class UnsupportedProgramError(ValueError):
    """A QuantModel this exporter cannot express as an IntegerProgram."""


@dataclass(frozen=True, eq=False)
class Requant:
    """codes = requantize(acc, m, s, lo - zero_point, hi - zero_point) + zero_point (m, s: [1] or [N])."""

    m: np.ndarray
    s: np.ndarray
    zero_point: int
    lo: int
    hi: int


@dataclass(frozen=True, eq=False)
class Gemm:
    """acc = (A - in_zero_point) @ weight^T + bias, proven |acc| <= acc_max < 2**31."""

    weight: np.ndarray  # int32 [N, K]: weight codes minus their per-channel zero-points
    bias: np.ndarray  # int32 [N] on the accumulator's scale
    in_zero_point: int
    acc_max: int


@dataclass(frozen=True, eq=False)
class Block:
    norm1: LayerNormConstants
    qkv: Gemm
    to_q: Requant
    to_k: Requant
    to_v: Requant
    heads: int
    q_zero_point: int
    k_zero_point: int
    scores_max: int  # proven |Q.K^T| bound
    softmax: SoftmaxConstants
    probs_zero_point: int
    v_zero_point: int
    pv_max: int  # proven |P.V| bound
    to_proj_in: Requant
    proj: Gemm
    attn_to_res: Requant  # proj accumulator -> mid residual codes
    res_to_mid: Requant  # input residual -> mid residual scale
    norm2: LayerNormConstants
    fc1: Gemm
    to_gelu: Requant  # fc1 accumulator -> one per-tensor scale
    gelu: GeluConstants
    fc2: Gemm
    mlp_to_res: Requant  # fc2 accumulator -> output residual codes
    mid_to_out: Requant  # mid residual -> output residual scale


@dataclass(frozen=True, eq=False)
class IntegerProgram:
    """The deployed model. Floats: the input quantizer (images arrive in float) and the logit scales."""

    image_scale: float
    image_zero_point: int
    image_qmax: int
    patch: int
    embed: Gemm
    embed_to_res: Requant
    cls_code: np.ndarray  # int32 [D]: (class token + pos[0]) at the first residual scale
    pos_codes: np.ndarray  # int32 [T - 1, D]: pos[1:] at the first residual scale
    blocks: list[Block]
    norm: LayerNormConstants
    head: Gemm
    logit_scale: np.ndarray  # float64 [classes]: s_in * s_w[n], used only to report logits


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, np.float64) + 0.5)


def _uniform(q, granularity: str, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, zero_point, qmax) of a uniform quantizer, refusing every other format."""
    form = q.integer_form() if isinstance(q, UniformQuantizer) else {"format": getattr(q, "format", "?")}
    if form["format"] != "uniform" or form.get("granularity") != granularity:
        raise UnsupportedProgramError(
            f"{name}: the integer program supports uniform per-{granularity} quantizers only (minmax, "
            f"percentile), got {form['format']} {form.get('granularity', '')}".rstrip())
    scale = form["scale"].double().numpy().reshape(-1)
    return scale, form["zero_point"].numpy().astype(np.int64).reshape(-1), form["code_max"]


def _act(q, name: str) -> tuple[float, int, int]:
    scale, zp, qmax = _uniform(q, "tensor", name)
    return float(scale[0]), int(zp[0]), qmax


def _requant(ratio: np.ndarray | float, zero_point: int, lo: int, hi: int) -> Requant:
    ms = [dyadic(float(r)) for r in np.atleast_1d(ratio)]
    return Requant(np.array([m for m, _ in ms], np.int64), np.array([s for _, s in ms], np.int64),
                   zero_point, lo, hi)


def _to_codes(ratio: np.ndarray | float, q, name: str) -> Requant:
    """Accumulator at ratio * s_out -> the activation quantizer's codes."""
    _, zp, qmax = _act(q, name)
    return _requant(ratio, zp, 0, qmax)


def _to_residual(ratio: np.ndarray | float) -> Requant:
    return _requant(ratio, 0, -RESIDUAL_MAX, RESIDUAL_MAX)


def _gemm(module: QuantLinear | QuantConv2d, name: str) -> tuple[Gemm, np.ndarray]:
    """The weight layer as integers, with its accumulator scale s_in * s_w [N]."""
    s_in, zp_in, qmax_in = _act(module.act_q, f"{name}.act_q")
    s_w, zp_w, _ = _uniform(module.weight_q, "channel", f"{name}.weight_q")
    with torch.no_grad():
        codes = module.weight_q.quantize(module.weight.detach()).double().numpy().reshape(len(s_w), -1)
    w = (codes - zp_w[:, None]).astype(np.int64)
    acc_scale = s_in * s_w
    b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(len(s_w))
    bias = _round_half_up(b / acc_scale).astype(np.int64)
    if np.abs(bias).max() > INT32_MAX:
        raise UnsupportedProgramError(f"{name}: bias does not fit int32 at the accumulator scale")
    acc_max = check_int32(dense_bound((-zp_in, qmax_in - zp_in), w, bias=bias), name)
    return Gemm(w.astype(np.int32), bias.astype(np.int32), zp_in, acc_max), acc_scale


def _operand_bound(a: tuple[int, int], b: tuple[int, int], k: int, name: str, limit: int = INT32_MAX) -> int:
    """Proven |A @ B^T| of two activation operands with inner dimension k."""
    lo, hi = np.full((1, k), b[0]), np.full((1, k), b[1])
    bound = check_int32(dense_bound(a, lo, hi), name)
    if bound > limit:
        raise UnsupportedProgramError(f"{name}: |acc| could reach {bound}, above {limit}")
    return bound


@torch.no_grad()
def _residual_scales(qmodel: QuantModel, calib_batches: Iterable[torch.Tensor]) -> list[float]:
    """Scale of each residual point: every block's input and mid sum, then the final norm's input."""
    model = qmodel.model
    points = [m for blk in model.blocks for m in (blk, blk.norm2)] + [model.norm]
    maxima = [0.0] * len(points)

    def hook(i: int):
        def record(_module, inputs):
            maxima[i] = max(maxima[i], float(inputs[0].abs().max()))
        return record

    handles = [p.register_forward_pre_hook(hook(i)) for i, p in enumerate(points)]
    try:
        for images in calib_batches:
            model(images)
    finally:
        for h in handles:
            h.remove()
    return [RESIDUAL_HEADROOM * max(v, 1e-12) / RESIDUAL_MAX for v in maxima]


def _layernorm(norm: torch.nn.LayerNorm, in_scale: float, out_q, name: str) -> LayerNormConstants:
    s, zp, qmax = _act(out_q, name)
    return layernorm_constants(norm.normalized_shape[0], in_scale, norm.weight.detach().double().numpy(),
                               norm.bias.detach().double().numpy(), norm.eps, RESIDUAL_BITS, s, zp,
                               out_q.bits)


def _gelu(acc_scale: float, out_q) -> GeluConstants:
    def quantize(v: np.ndarray) -> np.ndarray:
        return out_q.quantize(torch.from_numpy(v).float()).numpy()
    return gelu_constants(acc_scale, quantize)


def _block(blk, i: int, tokens: int, s_res_in: float, s_mid: float, s_out: float) -> Block:
    name = f"blocks.{i}"
    attn, mlp = blk.attn, blk.mlp
    if not isinstance(attn, QuantAttention) or not all(
            isinstance(m, nn.Identity) for m in (blk.ls1, blk.ls2, attn.q_norm, attn.k_norm, attn.norm, mlp.norm)):
        raise UnsupportedProgramError(f"{name}: only plain ViT blocks (no layer scale, no q/k norm) are supported")
    qkv, qkv_scale = _gemm(attn.qkv, f"{name}.attn.qkv")
    dim = attn.attn_dim
    s_q, zp_q, max_q = _act(attn.q_q, f"{name}.attn.q_q")
    s_k, zp_k, max_k = _act(attn.k_q, f"{name}.attn.k_q")
    s_v, zp_v, max_v = _act(attn.v_q, f"{name}.attn.v_q")
    s_p, zp_p, max_p = _act(attn.probs_q, f"{name}.attn.probs_q")
    s_pin, _, _ = _act(attn.proj.act_q, f"{name}.attn.proj.act_q")
    # Q.K^T sums over the head dimension, P.V over the tokens.
    scores_max = _operand_bound((-zp_q, max_q - zp_q), (-zp_k, max_k - zp_k), attn.head_dim,
                                f"{name}.attn.qk", SOFTMAX_INPUT_MAX)
    pv_max = _operand_bound((-zp_p, max_p - zp_p), (-zp_v, max_v - zp_v), tokens, f"{name}.attn.pv")
    proj, proj_scale = _gemm(attn.proj, f"{name}.attn.proj")
    fc1, fc1_scale = _gemm(mlp.fc1, f"{name}.mlp.fc1")
    fc2, fc2_scale = _gemm(mlp.fc2, f"{name}.mlp.fc2")
    gelu_scale = float(fc1_scale.min())
    gelu_ratio = fc1_scale / gelu_scale
    if fc1.acc_max * gelu_ratio.max() > INT32_MAX:
        raise UnsupportedProgramError(f"{name}.mlp: the GELU input could exceed int32 on the common scale")
    return Block(
        norm1=_layernorm(blk.norm1, s_res_in, attn.qkv.act_q, f"{name}.norm1"),
        qkv=qkv,
        to_q=_to_codes(qkv_scale[:dim] / s_q, attn.q_q, "q"),
        to_k=_to_codes(qkv_scale[dim:2 * dim] / s_k, attn.k_q, "k"),
        to_v=_to_codes(qkv_scale[2 * dim:] / s_v, attn.v_q, "v"),
        heads=attn.num_heads,
        q_zero_point=zp_q, k_zero_point=zp_k,
        scores_max=scores_max,
        softmax=softmax_constants(s_q * s_k * attn.scale, uniform_output(s_p, zp_p, attn.probs_q.bits,
                                                                           EXP_ONE_BITS)),
        probs_zero_point=zp_p, v_zero_point=zp_v,
        pv_max=pv_max,
        to_proj_in=_to_codes(s_p * s_v / s_pin, attn.proj.act_q, "proj_in"),
        proj=proj,
        attn_to_res=_to_residual(proj_scale / s_mid),
        res_to_mid=_to_residual(s_res_in / s_mid),
        norm2=_layernorm(blk.norm2, s_mid, mlp.fc1.act_q, f"{name}.norm2"),
        fc1=fc1,
        to_gelu=_requant(gelu_ratio, 0, -INT32_MAX, INT32_MAX),
        gelu=_gelu(gelu_scale, mlp.fc2.act_q),
        fc2=fc2,
        mlp_to_res=_to_residual(fc2_scale / s_out),
        mid_to_out=_to_residual(s_mid / s_out),
    )


def export(qmodel: QuantModel, calib_batches: Iterable[torch.Tensor]) -> IntegerProgram:
    """The IntegerProgram of a calibrated ViT QuantModel; calib_batches set the residual scales."""
    model = qmodel.model
    if not isinstance(model, VisionTransformer) or model.global_pool != "token" or model.cls_token is None \
            or not isinstance(model.fc_norm, nn.Identity) or not isinstance(model.norm_pre, nn.Identity) \
            or model.no_embed_class or model.reg_token is not None:
        raise UnsupportedProgramError("export supports timm ViT / DeiT with a class token and token pooling")
    conv = model.patch_embed.proj
    if not isinstance(conv, QuantConv2d) or conv.stride != conv.weight.shape[2:] or conv.padding != (0, 0) \
            or conv.weight.shape[2] != conv.weight.shape[3]:
        raise UnsupportedProgramError("patch embedding must be a square, non-overlapping convolution")
    scales = _residual_scales(qmodel, calib_batches)
    s0 = scales[0]
    embed, embed_scale = _gemm(conv, "patch_embed.proj")
    s_img, zp_img, qmax_img = _act(conv.act_q, "patch_embed.proj.act_q")
    pos = model.pos_embed.detach().double().numpy()[0]
    cls = model.cls_token.detach().double().numpy()[0, 0]

    def residual_codes(v: np.ndarray) -> np.ndarray:
        return np.clip(_round_half_up(v / s0), -RESIDUAL_MAX, RESIDUAL_MAX).astype(np.int32)

    tokens = pos.shape[0]
    blocks = [_block(blk, i, tokens, scales[2 * i], scales[2 * i + 1], scales[2 * i + 2])
              for i, blk in enumerate(model.blocks)]
    head, head_scale = _gemm(model.head, "head")
    return IntegerProgram(
        image_scale=s_img, image_zero_point=zp_img, image_qmax=qmax_img, patch=int(conv.weight.shape[2]),
        embed=embed, embed_to_res=_to_residual(embed_scale / s0),
        cls_code=residual_codes(cls + pos[0]), pos_codes=residual_codes(pos[1:]),
        blocks=blocks,
        norm=_layernorm(model.norm, scales[-1], model.head.act_q, "norm"),
        head=head, logit_scale=head_scale)
