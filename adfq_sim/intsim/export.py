"""Export a calibrated ViT / DeiT QuantModel to an IntegerProgram (the semantics: `program`).

Formats exported (every recipe of `quant.recipes`): uniform activations per tensor and weights per
output channel; PPOQ (per-token steps and zero-points, sparse int16 outliers) on LayerNorm outputs;
log2 / log-sqrt2 codes on softmax outputs and SLQ (shifted log) on GELU outputs; PTQ4ViT's
twin-uniform on softmax and GELU outputs. Choices fixed here, once:
- A bias is round_half_up(b / accumulator scale), except for the layers that feed the residual stream
  (patch embedding, proj, fc2), whose accumulator grid (s_in * s_w, coarse at 4 bits) is far coarser
  than the residual step: their bias is the requantization's offset, on the output scale with
  s fractional bits. (On the grid, the demo's W4A4 patch embedding was off by up to 38 residual steps
  per channel.) SLQ's static shift folds into fc2's bias: W (shift + L(q)) + b = W L(q) + (b + shift *
  rowsum(W)).
- Log operands keep E fraction bits, the largest E (<= MAX_LOG_FRAC_BITS) whose accumulator bound
  fits int32.
- A saturated accumulator (PPOQ, twin-uniform) is accepted only where saturation cannot change a code:
  its requantization maps +-(2**31 - 1) onto the clamped ends of the output range (`_check_saturation`).
- GELU: the fc1 accumulator is requantized to one per-tensor scale, the finest of its (token x)
  channel scales, clamped to int32; the breakpoint table must be flat beyond that clamp.
- Residual stream: RESIDUAL_HEADROOM x the calibration maximum of |x| at each residual point.
- Softmax input scale folds attention's 1/sqrt(d): s_q * s_k * scale.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from adfq_sim.hooks import attached
from adfq_sim.intsim.bounds import INT32_MAX, check_int32, dense_bound, log_shift_bound
from adfq_sim.intsim.dyadic import dyadic_array, requantize
from adfq_sim.intsim.nonlinear_reference import (EXP_ONE_BITS, SOFTMAX_INPUT_MAX, GeluConstants, LayerNormConstants,
                                                 gelu_constants, layernorm_constants, log_output, softmax_constants,
                                                 step_output, uniform_output)
from adfq_sim.intsim.program import (RESIDUAL_BITS, RESIDUAL_MAX, Block, Gemm, IntegerProgram, LogOperand, Matmul,
                                     Requant, TwinOperand, UniformOperand, UnsupportedProgramError)
from adfq_sim.intsim.reference import SATURATION
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.modules import QuantAttention, QuantConv2d, QuantLinear
from adfq_sim.quant.quantizers import LOG_BASES

RESIDUAL_HEADROOM = 2.0  # one bit above the calibration maximum: test images may exceed it
MAX_LOG_FRAC_BITS = 24  # E of log-shift GEMMs: B << E must stay inside int32 for |B| <= 2**7


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, np.float64) + 0.5)


def _form(q, name: str, formats: tuple[str, ...]) -> dict:
    form = q.integer_form()
    fmt = form["format"] if form["format"] != "uniform" else f"uniform-{form['granularity']}"
    if fmt not in formats:
        raise UnsupportedProgramError(f"{name}: the integer program takes {' or '.join(formats)} here, got {fmt}")
    return form


def _uniform_tensor(q, name: str) -> tuple[float, int, int]:
    """(scale, zero_point, qmax) of a per-tensor uniform quantizer."""
    form = _form(q, name, ("uniform-tensor",))
    return float(form["scale"]), int(form["zero_point"]), form["code_max"]


def _requant(ratio: np.ndarray | float, zero_point: int, lo: int, hi: int,
             bias: np.ndarray | None = None) -> Requant:
    """The dyadic rule of `ratio`; `bias` (float, in output steps, per channel) becomes its offset."""
    ratio = np.asarray(ratio, np.float64)
    m, s = dyadic_array(ratio.reshape(-1) if ratio.ndim < 2 else ratio)
    offset = np.zeros(1, np.int64)
    if bias is not None:
        offset = _round_half_up(bias * 2.0**s.astype(np.float64)).astype(np.int64)
        if np.abs(offset).max(initial=0) >= 1 << 62:
            raise UnsupportedProgramError("a bias does not fit the requantization offset")
    return Requant(m, s, zero_point, lo, hi, offset)


def _to_codes(ratio: np.ndarray | float, q, name: str) -> Requant:
    """Accumulator at ratio * s_out -> the (per-tensor uniform) activation quantizer's codes."""
    _, zp, qmax = _uniform_tensor(q, name)
    return _requant(ratio, zp, 0, qmax)


def _to_residual(ratio: np.ndarray | float, bias: np.ndarray | None = None) -> Requant:
    return _requant(ratio, 0, -RESIDUAL_MAX, RESIDUAL_MAX, bias)


def _rows(r: Requant, acc: int) -> np.ndarray:
    """The rule applied to the value `acc` at every (token x) channel of r."""
    return requantize(np.full(r.m.shape, acc, np.int64), r.m, r.s, r.lo - r.zero_point, r.hi - r.zero_point,
                      r.offset)


def _check_saturation(r: Requant, saturated: bool, name: str) -> Requant:
    """A saturated accumulator's rule must already clamp at +-SATURATION, so saturation changes no code."""
    if saturated and ((_rows(r, SATURATION) != r.hi - r.zero_point).any()
                      or (_rows(r, -SATURATION) != r.lo - r.zero_point).any()):
        raise UnsupportedProgramError(f"{name}: the saturated int32 accumulator does not cover the output range")
    return r


def _weight_codes(module: QuantLinear | QuantConv2d, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(W codes minus zero-points [N, K] int64, per-channel scale [N])."""
    form = _form(module.weight_q, f"{name}.weight_q", ("uniform-channel",))
    scale = form["scale"].double().numpy().reshape(-1)
    zp = form["zero_point"].numpy().astype(np.int64).reshape(-1)
    with torch.no_grad():
        codes = module.weight_q.quantize(module.weight.detach()).double().numpy().reshape(len(scale), -1)
    return codes.astype(np.int64) - zp[:, None], scale


def _gemm(module: QuantLinear | QuantConv2d, name: str, formats: tuple[str, ...],
          bias_out: bool = False) -> tuple[Gemm, np.ndarray, np.ndarray]:
    """The weight layer as integers, its accumulator scale ([N], or [T, N] for a PPOQ input) and, with
    bias_out, its float bias [N] (SLQ's shift folded in) left for the requantization's offset."""
    w, s_w = _weight_codes(module, name)
    b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(len(s_w))
    form = _form(module.act_q, f"{name}.act_q", formats)
    if form["format"] == "log":  # SLQ: W (shift + L(q)) + b = W L(q) + (b + shift * rowsum(W))
        b = b + float(form["shift"]) * (w * s_w[:, None]).sum(axis=1)
    gemm, acc_scale = _gemm_acc(form, w, s_w, np.zeros_like(b) if bias_out else b, name)
    return gemm, acc_scale, b


def _gemm_acc(form: dict, w: np.ndarray, s_w: np.ndarray, b: np.ndarray, name: str) -> tuple[Gemm, np.ndarray]:
    """The Gemm of weights w (codes minus zero-points) with float bias b on the accumulator's grid."""
    fmt = form["format"]
    if fmt == "uniform":
        s_in, zp, qmax = float(form["scale"]), int(form["zero_point"]), form["code_max"]
        acc_scale = s_in * s_w
        bias = _round_half_up(b / acc_scale).astype(np.int64)
        bound = check_int32(dense_bound((-zp, qmax - zp), w, bias=bias), name)
        return Gemm(w.astype(np.int32), bias, UniformOperand(np.array([zp], np.int64)), bound, False), acc_scale
    if fmt == "ppoq":
        if form["outliers"] != "int16":
            raise UnsupportedProgramError(f"{name}.act_q: PPOQ outliers in float have no integer form "
                                          f"(set quant.adfq.outliers: int16)")
        step = form["scale"].double().numpy().reshape(-1)
        zp = form["zero_point"].numpy().astype(np.int64).reshape(-1)
        shift = int(form["outlier_shift"])
        acc_scale = (step * 2.0**-shift)[:, None] * s_w[None, :]
        bias = _round_half_up(b[None, :] / acc_scale).astype(np.int64)
        dense = check_int32(dense_bound((-int(zp.max()), form["code_max"] - int(zp.min())), w), f"{name} (dense)")
        return Gemm(w.astype(np.int32), bias, UniformOperand(zp, shift), dense, True), acc_scale
    if fmt == "log":
        delta = float(form["delta"])
        for e in range(MAX_LOG_FRAC_BITS, -1, -1):
            acc_scale = delta * 2.0**-e * s_w
            bias = _round_half_up(b / acc_scale).astype(np.int64)
            bound = log_shift_bound(w, None, e, bias)
            if bound.max_abs <= INT32_MAX:
                operand = LogOperand(form["base"], e, form["zero_code"])
                return Gemm(w.astype(np.int32), bias, operand, bound.max_abs, False), acc_scale
        check_int32(bound, name)  # raises, naming the layer
    # twin-uniform (gelu mode on a weight layer's input)
    half, m = 1 << (form["bits"] - 1), form["shift"]
    acc_scale = float(form["fine_step"]) * s_w
    bias = _round_half_up(b / acc_scale).astype(np.int64)
    parts = [check_int32(dense_bound(r, w), f"{name} ({kind})") for kind, r in _twin_ranges(form["mode"], half)]
    return Gemm(w.astype(np.int32), bias, TwinOperand(form["mode"], half, m), max(parts), True), acc_scale


def _twin_ranges(mode: str, half: int) -> list[tuple[str, tuple[int, int]]]:
    """Level ranges of the coarse and the fine operand of `reference.twin_levels`."""
    return [("coarse", (0, half - 1)), ("fine", (0, half - 1) if mode == "softmax" else (-half, 0))]


def _activation_bound(a: tuple[int, int], b: tuple[int, int], k: int, name: str) -> int:
    """Proven |A @ B^T| of two uniform activation operands with inner dimension k."""
    return check_int32(dense_bound(a, np.full((1, k), b[0]), np.full((1, k), b[1])), name)


def _probs_matmul(q, v_range: tuple[int, int], zp_v: int, tokens: int, name: str) -> tuple[Matmul, float]:
    """softmax . V: the probs operand by the probs quantizer's format, and the accumulator's scale / s_v."""
    form = _form(q, f"{name}.probs_q", ("uniform-tensor", "log", "twin_uniform"))
    v_lo, v_hi = np.full((1, tokens), v_range[0]), np.full((1, tokens), v_range[1])
    if form["format"] == "uniform":
        zp, qmax = int(form["zero_point"]), form["code_max"]
        bound = check_int32(dense_bound((-zp, qmax - zp), v_lo, v_hi), f"{name}.pv")
        return Matmul(UniformOperand(np.array([zp], np.int64)), zp_v, bound, False), float(form["scale"])
    if form["format"] == "log":
        if form["shift"] != 0:
            raise UnsupportedProgramError(f"{name}.probs_q: a shifted log quantizer on softmax outputs")
        for e in range(MAX_LOG_FRAC_BITS, -1, -1):
            bound = log_shift_bound(v_lo, v_hi, e)
            if bound.max_abs <= INT32_MAX:
                operand = LogOperand(form["base"], e, form["zero_code"])
                return Matmul(operand, zp_v, bound.max_abs, False), float(form["delta"]) * 2.0**-e
        check_int32(bound, f"{name}.pv")
    if form["mode"] != "softmax":
        raise UnsupportedProgramError(f"{name}.probs_q: twin-uniform softmax outputs need mode 'softmax'")
    half = 1 << (form["bits"] - 1)
    parts = [check_int32(dense_bound(r, v_lo, v_hi), f"{name}.pv ({kind})") for kind, r in _twin_ranges("softmax", half)]
    return Matmul(TwinOperand("softmax", half, form["shift"]), zp_v, max(parts), True), float(form["fine_step"])


def _softmax_output(q):
    form = q.integer_form()
    if form["format"] == "uniform":
        return uniform_output(float(form["scale"]), int(form["zero_point"]), q.bits, EXP_ONE_BITS)
    if form["format"] == "log":
        return log_output(float(form["delta"]), LOG_BASES[form["base"]], q.bits, EXP_ONE_BITS)

    def quantize(v: np.ndarray) -> np.ndarray:
        return q.quantize(torch.from_numpy(v)).numpy()
    return step_output(quantize, EXP_ONE_BITS, 1 << EXP_ONE_BITS)


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

    with attached(p.register_forward_pre_hook(hook(i)) for i, p in enumerate(points)):
        for images in calib_batches:
            model(images)
    return [RESIDUAL_HEADROOM * max(v, 1e-12) / RESIDUAL_MAX for v in maxima]


def _layernorm(norm: nn.LayerNorm, in_scale: float, out_q, name: str) -> LayerNormConstants:
    """LayerNorm into a per-tensor uniform or a PPOQ quantizer (per-token output, int16 outliers)."""
    form = _form(out_q, name, ("uniform-tensor", "ppoq"))
    args = (norm.normalized_shape[0], in_scale, norm.weight.detach().double().numpy(),
            norm.bias.detach().double().numpy(), norm.eps, RESIDUAL_BITS)
    scale = form["scale"].double().numpy().reshape(-1)
    zp = form["zero_point"].numpy().astype(np.int64).reshape(-1)
    if form["format"] == "uniform":
        return layernorm_constants(*args, float(scale[0]), int(zp[0]), out_q.bits)
    return layernorm_constants(*args, scale, zp, out_q.bits, form["alpha"], scale * 2.0 ** -form["outlier_shift"])


def _gelu(fc1: Gemm, fc1_scale: np.ndarray, out_q, name: str) -> tuple[Requant, GeluConstants]:
    """fc1 accumulator -> the finest common scale (clamped to int32) -> GELU + the next quantizer's codes."""
    gelu_scale = float(fc1_scale.min())
    to_gelu = _requant(fc1_scale / gelu_scale, 0, -INT32_MAX, INT32_MAX)

    def quantize(v: np.ndarray) -> np.ndarray:
        return out_q.quantize(torch.from_numpy(v)).numpy()

    gelu = gelu_constants(gelu_scale, quantize)
    # The int32 clamp (and any accumulator saturation before it) is exact only if GELU's codes are
    # already constant beyond it: those of GELU(-inf) = 0 and of GELU(+inf) = the top of the range.
    ends = quantize(np.array([0.0, 1e30]))
    if gelu.codes[0] != ends[0] or gelu.codes[-1] != ends[1]:
        raise UnsupportedProgramError(f"{name}: the int32 GELU input does not reach the quantizer's saturation")
    return to_gelu, gelu


def _block(blk, i: int, tokens: int, s_res_in: float, s_mid: float, s_out: float) -> Block:
    name = f"blocks.{i}"
    attn, mlp = blk.attn, blk.mlp
    if not isinstance(attn, QuantAttention) or not all(
            isinstance(m, nn.Identity) for m in (blk.ls1, blk.ls2, attn.q_norm, attn.k_norm, attn.norm, mlp.norm)):
        raise UnsupportedProgramError(f"{name}: only plain ViT blocks (no layer scale, no q/k norm) are supported")
    qkv, qkv_scale, _ = _gemm(attn.qkv, f"{name}.attn.qkv", ("uniform-tensor", "ppoq"))
    dim = attn.attn_dim
    s_q, zp_q, max_q = _uniform_tensor(attn.q_q, f"{name}.attn.q_q")
    s_k, zp_k, max_k = _uniform_tensor(attn.k_q, f"{name}.attn.k_q")
    s_v, zp_v, max_v = _uniform_tensor(attn.v_q, f"{name}.attn.v_q")
    s_pin, _, _ = _uniform_tensor(attn.proj.act_q, f"{name}.attn.proj.act_q")
    scores_max = _activation_bound((-zp_q, max_q - zp_q), (-zp_k, max_k - zp_k), attn.head_dim, f"{name}.attn.qk")
    if scores_max > SOFTMAX_INPUT_MAX:
        raise UnsupportedProgramError(f"{name}.attn.qk: |Q.K^T| could reach {scores_max}, above {SOFTMAX_INPUT_MAX}")
    pv, pv_scale = _probs_matmul(attn.probs_q, (-zp_v, max_v - zp_v), zp_v, tokens, f"{name}.attn")
    proj, proj_scale, proj_bias = _gemm(attn.proj, f"{name}.attn.proj", ("uniform-tensor",), bias_out=True)
    fc1, fc1_scale, _ = _gemm(mlp.fc1, f"{name}.mlp.fc1", ("uniform-tensor", "ppoq"))
    fc2, fc2_scale, fc2_bias = _gemm(mlp.fc2, f"{name}.mlp.fc2", ("uniform-tensor", "log", "twin_uniform"),
                                     bias_out=True)
    to_gelu, gelu = _gelu(fc1, fc1_scale, mlp.fc2.act_q, f"{name}.mlp")
    return Block(
        norm1=_layernorm(blk.norm1, s_res_in, attn.qkv.act_q, f"{name}.norm1"),
        qkv=qkv,
        to_q=_check_saturation(_to_codes(qkv_scale[..., :dim] / s_q, attn.q_q, "q"), qkv.saturated, f"{name}.q"),
        to_k=_check_saturation(_to_codes(qkv_scale[..., dim:2 * dim] / s_k, attn.k_q, "k"), qkv.saturated,
                               f"{name}.k"),
        to_v=_check_saturation(_to_codes(qkv_scale[..., 2 * dim:] / s_v, attn.v_q, "v"), qkv.saturated, f"{name}.v"),
        heads=attn.num_heads,
        qk=Matmul(UniformOperand(np.array([zp_q], np.int64)), zp_k, scores_max, False),
        softmax=softmax_constants(s_q * s_k * attn.scale, _softmax_output(attn.probs_q)),
        pv=pv,
        to_proj_in=_check_saturation(_to_codes(pv_scale * s_v / s_pin, attn.proj.act_q, "proj_in"), pv.saturated,
                                     f"{name}.attn.pv"),
        proj=proj,
        attn_to_res=_to_residual(proj_scale / s_mid, proj_bias / s_mid),
        res_to_mid=_to_residual(s_res_in / s_mid),
        norm2=_layernorm(blk.norm2, s_mid, mlp.fc1.act_q, f"{name}.norm2"),
        fc1=fc1,
        to_gelu=to_gelu,
        gelu=gelu,
        fc2=fc2,
        mlp_to_res=_check_saturation(_to_residual(fc2_scale / s_out, fc2_bias / s_out), fc2.saturated,
                                     f"{name}.mlp.fc2"),
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
    embed, embed_scale, embed_bias = _gemm(conv, "patch_embed.proj", ("uniform-tensor",), bias_out=True)
    s_img, zp_img, qmax_img = _uniform_tensor(conv.act_q, "patch_embed.proj.act_q")
    pos = model.pos_embed.detach().double().numpy()[0]
    cls = model.cls_token.detach().double().numpy()[0, 0]

    def residual_codes(v: np.ndarray) -> np.ndarray:
        return np.clip(_round_half_up(v / s0), -RESIDUAL_MAX, RESIDUAL_MAX).astype(np.int32)

    tokens = pos.shape[0]
    blocks = [_block(blk, i, tokens, scales[2 * i], scales[2 * i + 1], scales[2 * i + 2])
              for i, blk in enumerate(model.blocks)]
    head, head_scale, _ = _gemm(model.head, "head", ("uniform-tensor",))
    return IntegerProgram(
        image_scale=s_img, image_zero_point=zp_img, image_qmax=qmax_img, patch=int(conv.weight.shape[2]),
        embed=embed, embed_to_res=_to_residual(embed_scale / s0, embed_bias / s0),
        cls_code=residual_codes(cls + pos[0]), pos_codes=residual_codes(pos[1:]),
        blocks=blocks,
        norm=_layernorm(model.norm, scales[-1], model.head.act_q, "norm"),
        head=head, logit_scale=head_scale)
