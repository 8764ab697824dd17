"""The integer constants of a calibrated model's layers, from its quantizers' integer forms.

Choices fixed here, once:
- A bias is round_half_up(b / accumulator scale), except for the layers that feed the residual stream
  (patch embedding, proj, fc2, Swin's reduction), whose accumulator grid (s_in * s_w, coarse at 4 bits)
  is far coarser than the residual step: their bias is the requantization's offset, on the output scale
  with s fractional bits. (On the grid, the demo's W4A4 patch embedding was off by up to 38 residual
  steps per channel.) SLQ's static shift folds into fc2's bias: W (shift + L(q)) + b = W L(q) + (b + shift
  * rowsum(W)).
- Log operands keep E fraction bits, the largest E (<= MAX_LOG_FRAC_BITS) whose accumulator bound
  fits int32.
- A saturated accumulator (PPOQ, twin-uniform) is accepted only where saturation cannot change a code:
  its requantization maps +-(2**31 - 1) onto the clamped ends of the output range (`check_saturation`).
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

from adfq_sim.formats import (RESIDUAL_BITS, RESIDUAL_MAX, LogOperand, Operand, OutlierOperand, TwinOperand,
                              UniformOperand, log2_of_base, quantizer_format)
from adfq_sim.hooks import attached
from adfq_sim.intsim.bounds import INT32_MAX, check_int32, dense_bound, log_shift_bound
from adfq_sim.intsim.dyadic import dyadic_array, requantize
from adfq_sim.intsim.nonlinear_reference import (EXP_ONE_BITS, GeluConstants, LayerNormConstants, TokenCodes,
                                                 gelu_constants, layernorm_constants, log_output, step_output,
                                                 token_codes_constants, uniform_output)
from adfq_sim.intsim.ops import Gemm, Requant
from adfq_sim.intsim.program import UnsupportedProgramError
from adfq_sim.intsim.reference import SATURATION
from adfq_sim.quant.modules import QuantConv2d, QuantLinear

RESIDUAL_HEADROOM = 2.0  # one bit above the calibration maximum: test images may exceed it
MAX_LOG_FRAC_BITS = 24  # E of log-shift GEMMs: B << E must stay inside int32 for |B| <= 2**7


def round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, np.float64) + 0.5)


def quantizer_form(q, name: str, accepted: tuple[str, ...]) -> dict:
    """q's integer form, refused by name unless the program takes its format at this position: a
    `formats` name (uniform ones with their granularity, e.g. "uniform-tensor") or "log" for any base."""
    form = q.integer_form()
    fmt = quantizer_format(form).name
    fmt = f"uniform-{form['granularity']}" if fmt == "uniform" else fmt
    if fmt not in accepted and form["format"] not in accepted:
        raise UnsupportedProgramError(f"{name}: the integer program takes {' or '.join(accepted)} here, got {fmt}")
    return form


def uniform_tensor(q, name: str) -> tuple[float, int, int]:
    """(scale, zero_point, qmax) of a per-tensor uniform quantizer."""
    form = quantizer_form(q, name, ("uniform-tensor",))
    return float(form["scale"]), int(form["zero_point"]), form["code_max"]


def requant(ratio: np.ndarray | float, zero_point: int, lo: int, hi: int, bias: np.ndarray | None = None) -> Requant:
    """The dyadic rule of `ratio`; `bias` (float, in output steps, per channel) becomes its offset."""
    ratio = np.asarray(ratio, np.float64)
    m, s = dyadic_array(ratio.reshape(-1) if ratio.ndim < 2 else ratio)
    offset = np.zeros(1, np.int64)
    if bias is not None:
        offset = round_half_up(bias * 2.0**s.astype(np.float64)).astype(np.int64)
        if np.abs(offset).max(initial=0) >= 1 << 62:
            raise UnsupportedProgramError("a bias does not fit the requantization offset")
    return Requant(m, s, zero_point, lo, hi, offset)


def to_codes(ratio: np.ndarray | float, q, name: str) -> Requant:
    """Accumulator at ratio * s_out -> the (per-tensor uniform) activation quantizer's codes."""
    _, zp, qmax = uniform_tensor(q, name)
    return requant(ratio, zp, 0, qmax)


def to_residual(ratio: np.ndarray | float, bias: np.ndarray | None = None) -> Requant:
    return requant(ratio, 0, -RESIDUAL_MAX, RESIDUAL_MAX, bias)


def _rows(r: Requant, acc: int) -> np.ndarray:
    """The rule applied to the value `acc` at every (token x) channel of r."""
    return requantize(np.full(r.m.shape, acc, np.int64), r.m, r.s, r.lo - r.zero_point, r.hi - r.zero_point,
                      r.offset)


def check_saturation(r: Requant, saturated: bool, name: str) -> Requant:
    """A saturated accumulator's rule must already clamp at +-SATURATION, so saturation changes no code."""
    if saturated and ((_rows(r, SATURATION) != r.hi - r.zero_point).any()
                      or (_rows(r, -SATURATION) != r.lo - r.zero_point).any()):
        raise UnsupportedProgramError(f"{name}: the saturated int32 accumulator does not cover the output range")
    return r


def _weight_codes(module: QuantLinear | QuantConv2d, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(W codes minus zero-points [N, K] int64, per-channel scale [N])."""
    form = quantizer_form(module.weight_q, f"{name}.weight_q", ("uniform-channel",))
    scale = form["scale"].double().numpy().reshape(-1)
    zp = form["zero_point"].numpy().astype(np.int64).reshape(-1)
    with torch.no_grad():
        codes = module.weight_q.quantize(module.weight.detach()).double().numpy().reshape(len(scale), -1)
    return codes.astype(np.int64) - zp[:, None], scale


def gemm(module: QuantLinear | QuantConv2d, name: str, accepted: tuple[str, ...],
         bias_out: bool = False) -> tuple[Gemm, np.ndarray, np.ndarray]:
    """The weight layer as integers, its accumulator scale ([N], or [T, N] for a PPOQ input) and, with
    bias_out, its float bias [N] (SLQ's shift folded in) left for the requantization's offset."""
    w, s_w = _weight_codes(module, name)
    b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(len(s_w))
    form = quantizer_form(module.act_q, f"{name}.act_q", accepted)
    operand = quantizer_format(form).operand
    if operand is LogOperand:  # SLQ: W (shift + L(q)) + b = W L(q) + (b + shift * rowsum(W))
        b = b + float(form["shift"]) * (w * s_w[:, None]).sum(axis=1)
    layer, acc_scale = _WEIGHT_LAYERS[operand](form, w, s_w, np.zeros_like(b) if bias_out else b, name)
    return layer, acc_scale, b


def _uniform_layer(form: dict, w: np.ndarray, s_w: np.ndarray, b: np.ndarray, name: str) -> tuple[Gemm, np.ndarray]:
    s_in, zp, qmax = float(form["scale"]), int(form["zero_point"]), form["code_max"]
    acc_scale = s_in * s_w
    bias = round_half_up(b / acc_scale).astype(np.int64)
    bound = check_int32(dense_bound((-zp, qmax - zp), w, bias=bias), name)
    return Gemm(w.astype(np.int32), bias, UniformOperand(np.array([zp], np.int64)), bound, False), acc_scale


def _ppoq_layer(form: dict, w: np.ndarray, s_w: np.ndarray, b: np.ndarray, name: str) -> tuple[Gemm, np.ndarray]:
    if form["outliers"] != "int16":
        raise UnsupportedProgramError(f"{name}.act_q: PPOQ outliers in float have no integer form "
                                      f"(set quant.adfq.outliers: int16)")
    step = form["scale"].double().numpy().reshape(-1)
    zp = form["zero_point"].numpy().astype(np.int64).reshape(-1)
    shift = int(form["outlier_shift"])
    acc_scale = (step * 2.0**-shift)[:, None] * s_w[None, :]
    bias = round_half_up(b[None, :] / acc_scale).astype(np.int64)
    dense = check_int32(dense_bound((-int(zp.max()), form["code_max"] - int(zp.min())), w), f"{name} (dense)")
    return Gemm(w.astype(np.int32), bias, OutlierOperand(zp, shift), dense, True), acc_scale


def _log_layer(form: dict, w: np.ndarray, s_w: np.ndarray, b: np.ndarray, name: str) -> tuple[Gemm, np.ndarray]:
    delta = float(form["delta"])
    for e in range(MAX_LOG_FRAC_BITS, -1, -1):
        acc_scale = delta * 2.0**-e * s_w
        bias = round_half_up(b / acc_scale).astype(np.int64)
        bound = log_shift_bound(w, None, e, bias)
        if bound.max_abs <= INT32_MAX:
            operand = LogOperand(form["base"], e, form["zero_code"])
            return Gemm(w.astype(np.int32), bias, operand, bound.max_abs, False), acc_scale
    check_int32(bound, name)  # raises, naming the layer


def _twin_layer(form: dict, w: np.ndarray, s_w: np.ndarray, b: np.ndarray, name: str) -> tuple[Gemm, np.ndarray]:
    """Twin-uniform (gelu mode) on a weight layer's input."""
    half, m = 1 << (form["bits"] - 1), form["shift"]
    acc_scale = float(form["fine_step"]) * s_w
    bias = round_half_up(b / acc_scale).astype(np.int64)
    parts = [check_int32(dense_bound(r, w), f"{name} ({kind})") for kind, r in twin_ranges(form["mode"], half)]
    return Gemm(w.astype(np.int32), bias, TwinOperand(form["mode"], half, m), max(parts), True), acc_scale


_WEIGHT_LAYERS = {UniformOperand: _uniform_layer, OutlierOperand: _ppoq_layer, LogOperand: _log_layer,
                  TwinOperand: _twin_layer}


def twin_ranges(mode: str, half: int) -> list[tuple[str, tuple[int, int]]]:
    """Level ranges of the coarse and the fine operand of `reference.twin_levels`."""
    return [("coarse", (0, half - 1)), ("fine", (0, half - 1) if mode == "softmax" else (-half, 0))]


def activation_bound(a: tuple[int, int], b: tuple[int, int], k: int, name: str) -> int:
    """Proven |A @ B^T| of two uniform activation operands with inner dimension k."""
    return check_int32(dense_bound(a, np.full((1, k), b[0]), np.full((1, k), b[1])), name)


def probs_operand(q, v_range: tuple[int, int], tokens: int, name: str) -> tuple[Operand, int, bool, float]:
    """softmax . V: the probs operand by the probs quantizer's format, its proven |acc|, whether the sum
    is saturated, and the accumulator's scale / s_v."""
    form = quantizer_form(q, f"{name}.probs_q", ("uniform-tensor", "log", "twin"))
    v_lo, v_hi = np.full((1, tokens), v_range[0]), np.full((1, tokens), v_range[1])
    operand = quantizer_format(form).operand
    if operand is UniformOperand:
        zp, qmax = int(form["zero_point"]), form["code_max"]
        bound = check_int32(dense_bound((-zp, qmax - zp), v_lo, v_hi), f"{name}.pv")
        return UniformOperand(np.array([zp], np.int64)), bound, False, float(form["scale"])
    if operand is LogOperand:
        if form["shift"] != 0:
            raise UnsupportedProgramError(f"{name}.probs_q: a shifted log quantizer on softmax outputs")
        for e in range(MAX_LOG_FRAC_BITS, -1, -1):
            bound = log_shift_bound(v_lo, v_hi, e)
            if bound.max_abs <= INT32_MAX:
                return LogOperand(form["base"], e, form["zero_code"]), bound.max_abs, False, \
                    float(form["delta"]) * 2.0**-e
        check_int32(bound, f"{name}.pv")
    if form["mode"] != "softmax":
        raise UnsupportedProgramError(f"{name}.probs_q: twin-uniform softmax outputs need mode 'softmax'")
    half = 1 << (form["bits"] - 1)
    parts = [check_int32(dense_bound(r, v_lo, v_hi), f"{name}.pv ({kind})") for kind, r in twin_ranges("softmax", half)]
    return TwinOperand("softmax", half, form["shift"]), max(parts), True, float(form["fine_step"])


def softmax_output(q):
    """The softmax's output rule: uniform, log thresholds, or a step table of any other monotone code."""
    form = q.integer_form()
    operand = quantizer_format(form).operand
    if operand is UniformOperand:
        return uniform_output(float(form["scale"]), int(form["zero_point"]), q.bits, EXP_ONE_BITS)
    if operand is LogOperand:
        return log_output(float(form["delta"]), log2_of_base(form["base"]), q.bits, EXP_ONE_BITS)

    def quantize(v: np.ndarray) -> np.ndarray:
        return q.quantize(torch.from_numpy(v)).numpy()
    return step_output(quantize, EXP_ONE_BITS, 1 << EXP_ONE_BITS)


@torch.no_grad()
def residual_scales(model: nn.Module, points: list[nn.Module], calib_batches: Iterable[torch.Tensor]) -> list[float]:
    """The scale of each residual point: RESIDUAL_HEADROOM x the calibration maximum of |input| of
    each module in `points`, on the signed residual grid."""
    maxima = [0.0] * len(points)

    def hook(i: int):
        def record(_module, inputs):
            maxima[i] = max(maxima[i], float(inputs[0].abs().max()))
        return record

    with attached(p.register_forward_pre_hook(hook(i)) for i, p in enumerate(points)):
        for images in calib_batches:
            model(images)
    return [RESIDUAL_HEADROOM * max(v, 1e-12) / RESIDUAL_MAX for v in maxima]


def layernorm(norm: nn.LayerNorm, in_scale: float) -> LayerNormConstants:
    """Integer LayerNorm of residual codes at in_scale, up to its int32 acc."""
    return layernorm_constants(norm.normalized_shape[0], in_scale, norm.weight.detach().double().numpy(),
                               norm.bias.detach().double().numpy(), norm.eps, RESIDUAL_BITS)


def token_codes(out_q, acc_frac: int, name: str) -> TokenCodes:
    """A LayerNorm acc -> a per-tensor uniform or a PPOQ quantizer's codes (per token, int16 outliers)."""
    form = quantizer_form(out_q, name, ("uniform-tensor", "ppoq"))
    scale = form["scale"].double().numpy().reshape(-1)
    zp = form["zero_point"].numpy().astype(np.int64).reshape(-1)
    if quantizer_format(form).operand is UniformOperand:
        return token_codes_constants(acc_frac, float(scale[0]), int(zp[0]), out_q.bits)
    return token_codes_constants(acc_frac, scale, zp, out_q.bits, form["alpha"], scale * 2.0 ** -form["outlier_shift"])


def gelu(fc1_scale: np.ndarray, out_q, name: str) -> tuple[Requant, GeluConstants]:
    """fc1 accumulator -> the finest common scale (clamped to int32) -> GELU + the next quantizer's codes."""
    gelu_scale = float(fc1_scale.min())
    to_gelu = requant(fc1_scale / gelu_scale, 0, -INT32_MAX, INT32_MAX)

    def quantize(v: np.ndarray) -> np.ndarray:
        return out_q.quantize(torch.from_numpy(v)).numpy()

    constants = gelu_constants(gelu_scale, quantize)
    # The int32 clamp (and any accumulator saturation before it) is exact only if GELU's codes are
    # already constant beyond it: those of GELU(-inf) = 0 and of GELU(+inf) = the top of the range.
    ends = quantize(np.array([0.0, 1e30]))
    if constants.codes[0] != ends[0] or constants.codes[-1] != ends[1]:
        raise UnsupportedProgramError(f"{name}: the int32 GELU input does not reach the quantizer's saturation")
    return to_gelu, constants
