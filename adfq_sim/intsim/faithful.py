"""The integer-faithful fake-quant mode: an IntegerProgram executed with exact PyTorch int64 tensor ops.

The third implementation of the integer contract. Verification compares its codes with the other
executors' at every quantized tensor, so it is written as an independent reading of the semantics
fixed in `ops`, `dyadic`, `reference` and `nonlinear_reference`: it imports their constants
(dataclasses) but none of their ops or handlers. A disagreement
therefore points at a bug in one of the two readings rather than at a shared helper.

Choices that keep it exact:
- Every tensor on the inference path is torch.int64; GEMMs are `torch.matmul` on int64 (exact integer
  sums on CPU, unlike a float64 matmul above 2**53).
- Round half up everywhere as (v + 2**(s-1)) >> s with torch's arithmetic right shift (floor, also on
  negatives); divisions of non-negative integers use floor division.
- The exact integer square root is Newton's iteration on integers from a power of two above the root
  (monotone decreasing to floor(sqrt(n))), not math.isqrt per element as in the reference.
- GELU's and the twin softmax's step functions and the log codes are binary searches
  (`torch.searchsorted`) instead of the reference's counts of thresholds: equal only if the thresholds
  are sorted, which is thus checked too.
- A log-shift GEMM is a sum of ordinary matmuls, one per shift value j present: (codes with shift j) @
  ((B << E) >> j)^T, one accumulator per code remainder r of base 2**(1/R) (the reference loops over
  rows instead).
- Index ops (patches, window partition and reverse, shifts, padding, patch merging) are torch
  indexing with the exported index tables.
- PPOQ's sparse outliers are the outlier matrix (zero elsewhere) times W^T; twin-uniform levels are
  formed with torch.where from the codes.
Floats appear only where the contract allows: quantizing the input image (float32, the fake-quant
input quantizer's rule) and scaling the head accumulator into logits.
"""

from __future__ import annotations

import numpy as np
import torch

from adfq_sim.formats import (OUTLIER_MAX, OUTLIER_MIN, RESIDUAL_MAX, LOG_BASES, LogOperand, Operand, OutlierOperand,
                              TwinOperand, UniformOperand)
from adfq_sim.intsim.nonlinear_reference import (EXP_FRAC_BITS, EXP_LO_BITS, EXP_MAX_Z, EXP_ONE_BITS, EXP_TABLE_HI,
                                                 EXP_TABLE_LO, SOFTMAX_INPUT_MAX, SUM_RECIP_BITS, GeluConstants,
                                                 LayerNormConstants, LogOutput, SoftmaxConstants, StepOutput,
                                                 TokenCodes, UniformOutput)
from adfq_sim.intsim.ops import (AddPositions, AttentionMix, AttentionScores, Gather, Gelu, Gemm, ImageInput,
                                 LayerNorm, Linear, MeanPool, Patchify, QuantizeTokens, Requant, Requantize,
                                 ResidualAdd, Softmax, op_outputs)
from adfq_sim.intsim.program import IntegerProgram
from adfq_sim.intsim.reference import SATURATION, root_rules

Codes = dict[str, torch.Tensor]


def _t(a: np.ndarray | int) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _round_shift(v: torch.Tensor, s: torch.Tensor | int) -> torch.Tensor:
    """floor(v / 2**s + 1/2) for s >= 1: round half up by an arithmetic shift."""
    one = torch.ones_like(s) if isinstance(s, torch.Tensor) else 1
    return (v + (one << (s - 1))) >> s


def _dyadic(acc: torch.Tensor, m: torch.Tensor | int, s: torch.Tensor | int, lo, hi,
            offset: torch.Tensor | int = 0) -> torch.Tensor:
    """The one requantization rule: clamp(round_half_up((acc * m + offset) / 2**s), lo, hi)."""
    return torch.clamp(_round_shift(acc * m + offset, s), lo, hi)


def _requant(acc: torch.Tensor, r: Requant) -> torch.Tensor:
    """Per-tensor, per-output-channel (last axis) or per token x channel rule (row i: token i % T),
    the zero-point added after the clamp."""
    m, s = _t(r.m), _t(r.s)
    if m.ndim == 2:
        token = torch.arange(acc.shape[0]) % m.shape[0]
        m, s = m[token], s[token]
    return _dyadic(acc, m, s, r.lo - r.zero_point, r.hi - r.zero_point, _t(r.offset)) + r.zero_point


def _uniform(acc: torch.Tensor, out: UniformOutput) -> torch.Tensor:
    """Uniform codes of rows [M, C] whose output constants are per token position (row % T)."""
    token = torch.arange(acc.shape[0]) % len(out.m)
    m, s, zp = (_t(a)[token][:, None] for a in (out.m, out.s, out.zero_point))
    return torch.clamp(_round_shift(acc * m, s), -zp, out.qmax - zp) + zp


def _saturate(acc: torch.Tensor) -> torch.Tensor:
    return torch.clamp(acc, -SATURATION, SATURATION)


def _log_product(codes: torch.Tensor, b: torch.Tensor, op: LogOperand, outliers=None) -> torch.Tensor:
    """sum_k floor(B[n, k] * 2**E / 2**j_k) over live codes, one matmul per shift j present and one
    accumulator per remainder r of q = R j + r, accumulator r times 2**(-r/R) by the dyadic rule."""
    scaled = b << op.frac_bits  # [..., N, K]
    live = codes != op.zero_code
    roots = LOG_BASES[op.base]
    rule_m, rule_s = root_rules(roots)
    shifts = codes // roots
    total = torch.zeros((*codes.shape[:-1], b.shape[-2]), dtype=torch.int64)
    for r in range(roots):
        selected = live & (codes % roots == r)
        acc = torch.zeros_like(total)
        for j in torch.unique(shifts[selected]).tolist():
            mask = (selected & (shifts == j)).long()
            acc += torch.matmul(mask, (scaled >> min(j, 62)).transpose(-1, -2))
        total += acc if r == 0 else _round_shift(acc * int(rule_m[r]), int(rule_s[r]))
    return total


def _twin_product(codes: torch.Tensor, b: torch.Tensor, op: TwinOperand, outliers=None) -> torch.Tensor:
    """(coarse, fine) levels: softmax codes c >= H are coarse c - H; gelu codes are signed b-bit levels,
    coarse when >= 0; coarse products shifted left by `shift`."""
    zero = torch.zeros_like(codes)
    if op.mode == "softmax":
        coarse, fine = torch.where(codes >= op.half, codes - op.half, zero), torch.where(codes < op.half, codes, zero)
    else:
        signed = torch.where(codes >= op.half, codes - 2 * op.half, codes)
        coarse, fine = torch.where(signed >= 0, signed, zero), torch.where(signed < 0, signed, zero)
    bt = b.transpose(-1, -2)
    return (torch.matmul(coarse, bt) << op.shift) + torch.matmul(fine, bt)


def _minus_zero_point(codes: torch.Tensor, zero_point: np.ndarray) -> torch.Tensor:
    zp = _t(zero_point)
    return codes - (zp[torch.arange(codes.shape[-2]) % zp.numel()][:, None] if zp.numel() > 1 else zp)


def _uniform_product(codes: torch.Tensor, b: torch.Tensor, op: UniformOperand, outliers=None) -> torch.Tensor:
    return torch.matmul(_minus_zero_point(codes, op.zero_point), b.transpose(-1, -2))


def _outlier_product(codes: torch.Tensor, b: torch.Tensor, op: OutlierOperand, outliers=None) -> torch.Tensor:
    """The dense codes on the coarse step, then the outlier matrix (zero elsewhere) times B^T."""
    bt = b.transpose(-1, -2)
    return (torch.matmul(_minus_zero_point(codes, op.zero_point), bt) << op.outlier_shift) + torch.matmul(outliers, bt)


_PRODUCTS = {UniformOperand: _uniform_product, OutlierOperand: _outlier_product, LogOperand: _log_product,
             TwinOperand: _twin_product}


def _product(codes: torch.Tensor, op: Operand, b: torch.Tensor, outliers: torch.Tensor | None = None
             ) -> torch.Tensor:
    """codes read by the operand format, times B^T (B [..., N, K]), before bias and saturation."""
    return _PRODUCTS[type(op)](codes, b, op, outliers)


def _linear(codes: torch.Tensor, g: Gemm, outliers: torch.Tensor | None = None) -> torch.Tensor:
    acc = _product(codes, g.operand, _t(g.weight), outliers)
    bias = _t(g.bias)
    acc = acc + (bias[torch.arange(acc.shape[0]) % bias.shape[0]] if bias.ndim == 2 else bias)
    return _saturate(acc) if g.saturated else acc


def _bit_length(v: torch.Tensor) -> torch.Tensor:
    """Bits of each non-negative int64 (0 for 0), by a binary search over shifts."""
    v, bits = v.clone(), torch.zeros_like(v)
    for step in (32, 16, 8, 4, 2, 1):
        high = (v >> step) > 0
        bits += high * step
        v = torch.where(high, v >> step, v)
    return bits + (v > 0)


def _isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for int64 n >= 0: integer Newton from 2**ceil(bits / 2) >= sqrt(n), which only decreases."""
    x = torch.ones_like(n) << ((_bit_length(n) + 1) >> 1)
    while True:
        y = (x + n // torch.clamp(x, min=1)) >> 1
        if not bool((y < x).any()):
            return torch.where(n > 0, x, torch.zeros_like(x))
        x = torch.minimum(x, y)


def _layernorm_acc(x: torch.Tensor, c: LayerNormConstants) -> torch.Tensor:
    """Integer LayerNorm of residual rows [M, C]: the acc with acc_frac fractional bits."""
    if int(x.abs().max()) > c.input_max or x.shape[1] != c.channels:
        raise ValueError(f"layernorm input outside its exported range |x| <= {c.input_max}, C = {c.channels}")
    total = x.sum(dim=1, keepdim=True)
    var = c.channels * (x * x).sum(dim=1, keepdim=True) - total * total + c.eps_int  # C^2 (var + eps)
    k = torch.clamp((62 - _bit_length(var)) // 2, min=0)  # normalise var to 61..62 bits before the root
    recip = (1 << c.recip_bits) // torch.clamp(_isqrt(var << (2 * k)), min=1)
    n = _round_shift((c.channels * x - total) * recip, c.recip_bits - c.frac_bits - k)
    acc = torch.clamp(n, -c.norm_max, c.norm_max) * _t(c.gamma) + _t(c.beta)
    return _round_shift(acc, c.acc_shift) if c.acc_shift else acc


def _token_codes(acc: torch.Tensor, t: TokenCodes) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The next quantizer's codes of acc rows (outliers at the zero-point) and, with PPOQ, the int16
    outlier codes as a matrix (0 elsewhere)."""
    codes = _uniform(acc, t.out)
    if not t.has_outliers:
        return codes, None
    token = torch.arange(acc.shape[0])
    zp = _t(t.out.zero_point)[token % len(t.out.m)][:, None]
    outlier = acc.abs() > t.outlier_threshold
    m = _t(t.outlier_m)[token % len(t.outlier_m)][:, None]
    s = _t(t.outlier_s)[token % len(t.outlier_s)][:, None]
    codes16 = _dyadic(acc, m, s, OUTLIER_MIN, OUTLIER_MAX)
    return torch.where(outlier, zp, codes), torch.where(outlier, codes16, torch.zeros_like(codes16))


def _softmax(scores: torch.Tensor, c: SoftmaxConstants) -> torch.Tensor:
    """Integer softmax of score rows [M, N]: base-2 exponent, table exp in Q30, one reciprocal per row."""
    frac_mask = (1 << EXP_FRAC_BITS) - 1
    a = torch.clamp(scores.max(dim=1, keepdim=True).values - scores, max=c.a_max)
    u = _dyadic(a, c.m, c.s, 0, EXP_MAX_Z << EXP_FRAC_BITS)
    z, f = u >> EXP_FRAC_BITS, u & frac_mask
    fraction = _round_shift(_t(EXP_TABLE_HI)[f // (1 << EXP_LO_BITS)] * _t(EXP_TABLE_LO)[f % (1 << EXP_LO_BITS)],
                            EXP_ONE_BITS)
    e = (fraction + ((1 << z) >> 1)) >> z  # fraction / 2**z rounded half up; z may be 0 (no shift, no half)
    probs = _round_shift(e * ((1 << SUM_RECIP_BITS) // e.sum(dim=1, keepdim=True)), 31)  # Q30
    if isinstance(c.out, LogOutput):
        return _log_codes(probs, c.out)
    if isinstance(c.out, StepOutput):
        return _step(probs, c.out.thresholds, c.out.codes)
    return _uniform(probs, UniformOutput(c.out.m[:1], c.out.s[:1], c.out.zero_point[:1], c.out.qmax))


def _log_codes(p: torch.Tensor, out: LogOutput) -> torch.Tensor:
    """#{k : p <= thresholds[k]} (thresholds descending) by a binary search; zero_code below zero_below."""
    ascending = _t(out.thresholds).flip(0)
    if bool((ascending[1:] < ascending[:-1]).any()):
        raise ValueError("log thresholds must be descending")
    codes = ascending.numel() - torch.searchsorted(ascending, p.contiguous(), right=False)
    return torch.where(p < out.zero_below, torch.full_like(codes, out.zero_code), codes)


def _step(v: torch.Tensor, thresholds: np.ndarray, codes: np.ndarray) -> torch.Tensor:
    """codes[#{k : v >= thresholds[k]}] by a binary search over the ascending thresholds."""
    t = _t(thresholds)
    if bool((t[1:] < t[:-1]).any()):
        raise ValueError("step thresholds must be ascending")
    return _t(codes)[torch.searchsorted(t, v.contiguous(), right=True)]


def _gelu(acc: torch.Tensor, c: GeluConstants) -> torch.Tensor:
    return _step(acc, c.thresholds, c.codes)


# ------------------------------------------------------------------------------------------ handlers


def _windows(x: torch.Tensor, heads: int, tokens: int) -> torch.Tensor:
    """[B * W * T, H * hd] -> [B * W, H, T, hd]."""
    return x.reshape(-1, tokens, heads, x.shape[1] // heads).permute(0, 2, 1, 3)


def _image(op: ImageInput, t: Codes, b: int) -> None:
    """The fake-quant input quantizer in float32: round_half_up(clamp(x / scale + zp, 0, qmax))."""
    x = t.pop("image").float() / torch.tensor(op.scale, dtype=torch.float32) + float(op.zero_point)
    t[op.output] = torch.floor(torch.clamp(x, 0, op.qmax) + 0.5).long().reshape(b, -1)


def _patchify(op: Patchify, t: Codes, b: int) -> None:
    p, c = op.patch, op.channels
    x = t[op.input].reshape(-1, c, op.height // p, p, op.width // p, p)
    t[op.output] = x.permute(0, 2, 4, 1, 3, 5).reshape(-1, c * p * p)


def _linear_op(op: Linear, t: Codes, b: int) -> None:
    acc = _linear(t[op.input], op.gemm, t[op.outliers] if op.outliers else None)
    for s in op.outputs:
        part = acc[:, s.start:s.stop]
        t[s.output] = part if s.rule is None else _requant(part, s.rule)


def _scores(op: AttentionScores, t: Codes, b: int) -> None:
    q, k = _windows(t[op.q], op.heads, op.tokens), _windows(t[op.k] - op.k_zero_point, op.heads, op.tokens)
    scores = _product(q, op.operand, k)  # [B * W, H, T, T]
    if op.bias is not None:
        scores = scores + _t(op.bias)
    if int(scores.abs().max()) > op.acc_max:
        raise ValueError(f"{op.name}: |Q.K^T + bias| above its proven bound {op.acc_max}")
    if op.mask is not None:
        mask = torch.as_tensor(op.mask).repeat(scores.shape[0] // op.mask.shape[0], 1, 1)[:, None]
        scores = torch.where(mask, torch.full_like(scores, -SOFTMAX_INPUT_MAX), scores)
    t[op.output] = scores.reshape(-1, op.tokens)


def _mix(op: AttentionMix, t: Codes, b: int) -> None:
    vt = _windows(t[op.v] - op.v_zero_point, op.heads, op.tokens).transpose(-1, -2)  # [B * W, H, hd, T]
    probs = t[op.probs].reshape(-1, op.heads, op.tokens, op.tokens)
    acc = _product(probs, op.operand, vt)
    acc = _saturate(acc) if op.saturated else acc
    t[op.output] = acc.permute(0, 2, 1, 3).reshape(-1, acc.shape[1] * acc.shape[3])


def _softmax_op(op: Softmax, t: Codes, b: int) -> None:
    t[op.output] = _softmax(t[op.input], op.constants)


def _requantize(op: Requantize, t: Codes, b: int) -> None:
    t[op.output] = _requant(t[op.input], op.rule)


def _residual_add(op: ResidualAdd, t: Codes, b: int) -> None:
    t[op.output] = torch.clamp(_requant(t[op.a], op.rule_a) + _requant(t[op.b], op.rule_b), -RESIDUAL_MAX,
                               RESIDUAL_MAX)


def _layernorm_op(op: LayerNorm, t: Codes, b: int) -> None:
    acc = _layernorm_acc(t[op.input], op.constants)
    if op.codes is None:
        t[op.output] = acc
    else:
        _codes_into(t, op.output, op.outlier_output, _token_codes(acc, op.codes))


def _quantize_tokens(op: QuantizeTokens, t: Codes, b: int) -> None:
    _codes_into(t, op.output, op.outlier_output, _token_codes(t[op.input], op.codes))


def _codes_into(t: Codes, output: str, outlier_output: str | None,
                codes: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    t[output] = codes[0]
    if outlier_output is not None:
        t[outlier_output] = codes[1]


def _gelu_op(op: Gelu, t: Codes, b: int) -> None:
    t[op.output] = _gelu(t[op.input], op.constants)


def _gather(op: Gather, t: Codes, b: int) -> None:
    """Input rows by the index table, zeros for -1, concatenated per output row."""
    x = t[op.input]
    x = x.reshape(b, -1, x.shape[1])
    index = _t(op.index)
    picked = x[:, torch.clamp(index, min=0)]  # [B, rows, k, C]
    picked = torch.where((index >= 0)[None, :, :, None], picked, torch.zeros_like(picked))
    t[op.output] = picked.reshape(-1, index.shape[1] * x.shape[2])


def _add_positions(op: AddPositions, t: Codes, b: int) -> None:
    x = t[op.input]
    x = torch.clamp(x.reshape(b, -1, x.shape[1]) + _t(op.positions), -RESIDUAL_MAX, RESIDUAL_MAX)
    t[op.output] = torch.cat([_t(op.prefix).expand(b, -1, -1), x], dim=1).reshape(-1, x.shape[2])


def _mean_pool(op: MeanPool, t: Codes, b: int) -> None:
    x = t[op.input]
    total = x.reshape(b, -1, x.shape[1]).sum(dim=1)
    t[op.output] = _requant(_round_shift(total, op.pre_shift) if op.pre_shift else total, op.rule)


HANDLERS = {ImageInput: _image, Patchify: _patchify, Linear: _linear_op, AttentionScores: _scores,
             Softmax: _softmax_op, AttentionMix: _mix, Requantize: _requantize, ResidualAdd: _residual_add,
             LayerNorm: _layernorm_op, QuantizeTokens: _quantize_tokens, Gelu: _gelu_op, Gather: _gather,
             AddPositions: _add_positions, MeanPool: _mean_pool}


@torch.no_grad()
def run_faithful(program: IntegerProgram, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Codes]:
    """Logits [B, classes] (float64) and the int64 codes of every verified tensor, [B, ...] each.

    The codes dict has `run_reference`'s keys and layouts, so `verify` can compare them tensor by tensor.
    """
    images = torch.as_tensor(images)
    tensors: Codes = {"image": images}
    codes: Codes = {}
    for op in program.ops:
        HANDLERS[type(op)](op, tensors, len(images))
        for name in op_outputs(op):
            if program.tensor(name).verified:
                codes[name] = tensors[name].reshape(len(images), -1)
    return tensors[program.logits].double() * torch.from_numpy(program.logit_scale), codes
