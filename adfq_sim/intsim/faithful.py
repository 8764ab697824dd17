"""The integer-faithful fake-quant mode: an IntegerProgram executed with exact PyTorch int64 tensor ops.

The third implementation of the integer contract (DESIGN, "The integer contract", item 7; issue 4,
scope 5c). Verification compares its codes with the other executors' at every quantized tensor, so it
is written as an independent reading of the semantics fixed in `program`, `dyadic`, `reference` and
`nonlinear_reference`: it imports their constants (dataclasses) but none of their ops. A disagreement
therefore points at a bug in one of the two readings rather than at a shared helper.

Choices that keep it exact:
- Every tensor on the inference path is torch.int64; GEMMs are `torch.matmul` on int64 (exact integer
  sums on CPU, unlike a float64 matmul above 2**53).
- Round half up everywhere as (v + 2**(s-1)) >> s with torch's arithmetic right shift (floor, also on
  negatives); divisions of non-negative integers use floor division.
- The exact integer square root is Newton's iteration on integers from a power of two above the root
  (monotone decreasing to floor(sqrt(n))), not math.isqrt per element as in the reference.
- GELU's step function is a binary search (`torch.searchsorted`, right side) instead of the reference's
  count of thresholds: the two are equal only if the thresholds are ascending, which is thus checked too.
Floats appear only where the contract allows: quantizing the input image (float32, the fake-quant
input quantizer's rule) and scaling the head accumulator into logits.
"""

from __future__ import annotations

import numpy as np
import torch

from adfq_sim.intsim.nonlinear_reference import (EXP_C1, EXP_C2, EXP_FRAC_BITS, EXP_MAX_Z, EXP_ONE_BITS,
                                                 SUM_RECIP_BITS, GeluConstants, LayerNormConstants,
                                                 SoftmaxConstants, UniformOutput)
from adfq_sim.intsim.program import RESIDUAL_MAX, Block, Gemm, IntegerProgram, Requant

Codes = dict[str, torch.Tensor]


def _t(a: np.ndarray | int) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _round_shift(v: torch.Tensor, s: torch.Tensor | int) -> torch.Tensor:
    """floor(v / 2**s + 1/2) for s >= 1: round half up by an arithmetic shift."""
    one = torch.ones_like(s) if isinstance(s, torch.Tensor) else 1
    return (v + (one << (s - 1))) >> s


def _dyadic(acc: torch.Tensor, m: torch.Tensor | int, s: torch.Tensor | int, lo, hi) -> torch.Tensor:
    """The one requantization rule: clamp(round_half_up(acc * m / 2**s), lo, hi)."""
    return torch.clamp(_round_shift(acc * m, s), lo, hi)


def _requant(acc: torch.Tensor, r: Requant) -> torch.Tensor:
    """Per-tensor or per-output-channel (last axis) rule, the zero-point added after the clamp."""
    return _dyadic(acc, _t(r.m), _t(r.s), r.lo - r.zero_point, r.hi - r.zero_point) + r.zero_point


def _uniform(acc: torch.Tensor, out: UniformOutput) -> torch.Tensor:
    """Uniform codes of rows [M, C] whose output constants are per token position (row % T)."""
    token = torch.arange(acc.shape[0]) % len(out.m)
    m, s, zp = (_t(a)[token][:, None] for a in (out.m, out.s, out.zero_point))
    return torch.clamp(_round_shift(acc * m, s), -zp, out.qmax - zp) + zp


def _linear(codes: torch.Tensor, g: Gemm) -> torch.Tensor:
    return torch.matmul(codes - g.in_zero_point, _t(g.weight).T) + _t(g.bias)


def _residual_add(a: torch.Tensor, ra: Requant, b: torch.Tensor, rb: Requant) -> torch.Tensor:
    return torch.clamp(_requant(a, ra) + _requant(b, rb), -RESIDUAL_MAX, RESIDUAL_MAX)


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


def _layernorm(x: torch.Tensor, c: LayerNormConstants) -> torch.Tensor:
    """Integer LayerNorm of residual rows [M, C] into the next quantizer's codes (outliers at the zero-point)."""
    if int(x.abs().max()) > c.input_max or x.shape[1] != c.channels:
        raise ValueError(f"layernorm input outside its exported range |x| <= {c.input_max}, C = {c.channels}")
    total = x.sum(dim=1, keepdim=True)
    var = c.channels * (x * x).sum(dim=1, keepdim=True) - total * total + c.eps_int  # C^2 (var + eps)
    k = torch.clamp((62 - _bit_length(var)) // 2, min=0)  # normalise var to 61..62 bits before the root
    recip = (1 << c.recip_bits) // torch.clamp(_isqrt(var << (2 * k)), min=1)
    n = _round_shift((c.channels * x - total) * recip, c.recip_bits - c.frac_bits - k)
    acc = torch.clamp(n, -c.norm_max, c.norm_max) * _t(c.gamma) + _t(c.beta)
    codes = _uniform(acc, c.out)
    if c.outlier_threshold >= 0:
        zp = _t(c.out.zero_point)[torch.arange(acc.shape[0]) % len(c.out.m)][:, None]
        codes = torch.where(acc.abs() > c.outlier_threshold, zp, codes)
    return codes


def _softmax(scores: torch.Tensor, c: SoftmaxConstants) -> torch.Tensor:
    """Integer softmax of score rows [M, N]: base-2 exponent, polynomial exp in Q30, one reciprocal per row."""
    if not isinstance(c.out, UniformOutput):
        raise ValueError("the integer-faithful mode supports uniform softmax outputs only, as `export` does")
    frac_mask = (1 << EXP_FRAC_BITS) - 1
    a = torch.clamp(scores.max(dim=1, keepdim=True).values - scores, max=c.a_max)
    u = _dyadic(a, c.m, c.s, 0, EXP_MAX_Z << EXP_FRAC_BITS)
    z, f = u >> EXP_FRAC_BITS, u & frac_mask
    poly = (1 << EXP_ONE_BITS) + _round_shift((_round_shift(EXP_C2 * f, EXP_FRAC_BITS) - EXP_C1) * f,
                                              EXP_FRAC_BITS)
    e = (poly + ((1 << z) >> 1)) >> z  # poly / 2**z rounded half up; z may be 0 (no shift, no half)
    probs = _round_shift(e * ((1 << SUM_RECIP_BITS) // e.sum(dim=1, keepdim=True)), 31)  # Q30
    return _uniform(probs, UniformOutput(c.out.m[:1], c.out.s[:1], c.out.zero_point[:1], c.out.qmax))


def _gelu(acc: torch.Tensor, c: GeluConstants) -> torch.Tensor:
    thresholds = _t(c.thresholds)
    if bool((thresholds[1:] < thresholds[:-1]).any()):
        raise ValueError("GELU thresholds must be ascending")
    return _t(c.codes)[torch.searchsorted(thresholds, acc.contiguous(), right=True)]


def _heads(a: torch.Tensor, zero_point: int, b: int, t: int, heads: int) -> torch.Tensor:
    """[B*T, D] codes -> [B, H, T, hd] operands with the zero-point removed."""
    return (a - zero_point).reshape(b, t, heads, -1).permute(0, 2, 1, 3)


def _block(r: torch.Tensor, blk: Block, codes: Codes, i: int) -> torch.Tensor:
    b, t, d = r.shape
    rows = r.reshape(b * t, d)
    x = _layernorm(rows, blk.norm1)
    qkv = _linear(x, blk.qkv)
    q, k, v = (_requant(part, rq) for part, rq in zip(qkv.split(d, dim=1), (blk.to_q, blk.to_k, blk.to_v)))
    scores = torch.matmul(_heads(q, blk.q_zero_point, b, t, blk.heads),
                          _heads(k, blk.k_zero_point, b, t, blk.heads).transpose(-1, -2))
    if int(scores.abs().max()) > blk.scores_max:
        raise ValueError(f"blocks.{i}: |Q.K^T| above its proven bound {blk.scores_max}")
    probs = _softmax(scores.reshape(-1, t), blk.softmax)
    pv = torch.matmul(probs.reshape(b, blk.heads, t, t) - blk.probs_zero_point,
                      _heads(v, blk.v_zero_point, b, t, blk.heads))
    pin = _requant(pv.permute(0, 2, 1, 3).reshape(b * t, d), blk.to_proj_in)
    mid = _residual_add(rows, blk.res_to_mid, _linear(pin, blk.proj), blk.attn_to_res)
    y = _layernorm(mid, blk.norm2)
    g = _gelu(_requant(_linear(y, blk.fc1), blk.to_gelu), blk.gelu)
    out = _residual_add(mid, blk.mid_to_out, _linear(g, blk.fc2), blk.mlp_to_res)
    for name, tensor in (("qkv_in", x), ("q", q), ("k", k), ("v", v), ("probs", probs), ("proj_in", pin),
                         ("residual_mid", mid), ("fc1_in", y), ("fc2_in", g), ("residual_out", out)):
        codes[f"blocks.{i}.{name}"] = tensor.reshape(b, -1)
    return out.reshape(b, t, d)


def _image_codes(images: torch.Tensor, p: IntegerProgram) -> torch.Tensor:
    """The fake-quant input quantizer in float32: round_half_up(clamp(x / scale + zp, 0, qmax))."""
    x = images.float() / torch.tensor(p.image_scale, dtype=torch.float32) + float(p.image_zero_point)
    return torch.floor(torch.clamp(x, 0, p.image_qmax) + 0.5).long()


@torch.no_grad()
def run_faithful(program: IntegerProgram, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Codes]:
    """Logits [B, classes] (float64) and the int64 codes of every quantized tensor, [B, ...] each.

    The codes dict has `run_reference`'s keys and layouts, so `verify` can compare them tensor by tensor.
    """
    images = torch.as_tensor(images)
    codes: Codes = {}
    pixels = _image_codes(images, program)
    codes["embed_in"] = pixels.reshape(len(pixels), -1)
    b, c, h, w = pixels.shape
    p = program.patch
    patches = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    emb = _requant(_linear(patches, program.embed), program.embed_to_res)
    emb = torch.clamp(emb + _t(program.pos_codes), -RESIDUAL_MAX, RESIDUAL_MAX)
    cls = _t(program.cls_code).expand(b, 1, -1)
    r = torch.cat([cls, emb], dim=1)
    codes["residual_in"] = r.reshape(b, -1)
    for i, blk in enumerate(program.blocks):
        r = _block(r, blk, codes, i)
    head_in = _layernorm(r[:, 0], program.norm)  # token pooling: the class token alone reaches the head
    codes["head_in"] = head_in
    logits = _linear(head_in, program.head).double() * torch.from_numpy(program.logit_scale)
    return logits, codes
