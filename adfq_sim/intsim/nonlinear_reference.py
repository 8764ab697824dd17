"""Integer-only non-linear ops: their export constants and the slow int64 NumPy reference (the spec).

Each op has a frozen dataclass of plain integers, built once at export from float scales by a
`*_constants` function; the reference functions here and the Numba kernels (`nonlinear.py`) read
the same dataclass and must agree bit for bit. Every rounding is half up, floor(x + 1/2), done as
`(v + 2**(k-1)) >> k` (arithmetic shift: floor, also on negatives) or by `dyadic.requantize`.
Rows of an [M, C] input are [batch, tokens] flattened, so row r belongs to token position r % T for
per-token output constants of length T (T = 1: per tensor).

Fixed semantics:
- isqrt: floor(sqrt(n)), exact for every int64 n >= 0.
- LayerNorm: no rounded mean. With S = sum x, V = C * sum x^2 - S^2 (= C^2 var, exact) and
  E = round(eps / s_x^2 * C^2), the normalised value y = (C x - S) / sqrt(V + E) is formed in
  fixed point with F fractional bits through one per-row reciprocal of an exact isqrt, clamped to
  |y| <= sqrt(C - 1) (its true bound), then n * G_c + B_c in int64 (gamma, beta as integers), shifted
  into an int32 acc, and one per-row dyadic requantization to the next quantizer's codes. A constant
  row (V + E = 0) gives y = 0. (The int64 product lets n and G keep ~20 fractional bits each: with the
  int32 product of an earlier version, F + gamma_bits <= 27 left 0.14 % of 8-bit codes one off.)
  With PPOQ outliers, |acc| above the integer alpha makes an outlier: its dense code is the zero-point
  and its int16 code, on the token's step / 2**outlier_shift, is the dyadic rule of acc clamped to int16.
- Softmax: a = row max - x; the base-2 exponent u = round(a * s_in * log2(e) * 2**K) by the dyadic
  rule; 2**(-u / 2**K) = 2**-z * 2**(-f / 2**K), the fraction from two small ROM tables (high and low
  halves of f, Q30 entries, one rounded product: relative error < 3e-9); values in Q30, row sum, one reciprocal per row, probabilities p in Q30; then uniform codes by the dyadic
  rule, log codes by integer comparisons of p with thresholds fixed at export, or any other monotone
  code (twin-uniform) by a step table of Q30 breakpoints found at export. Probabilities under
  about 2**-31 become 0 (the zero code): only 8-bit log codes reach below that, for values < 1e-9.
- GELU: a table of breakpoints. GELU followed by the next quantizer (SLQ log or uniform) is a step
  function of the int32 fc1 accumulator, monotone on each side of GELU's minimum, so it is exactly
  `codes[#{k : acc >= thresholds[k]}]` with at most 2 * 2**bits integer thresholds found at export.
  Why not a value table over a requantized b_t-bit code: the index grid adds its own error (measured
  on N(0, 1.5) inputs, index over [-6, 6]: 1.2 % of 4-bit SLQ codes off by one at b_t = 10, 6.6 % of
  8-bit uniform codes); nor I-BERT's i-GELU polynomial (its erf fit adds error too). The breakpoints
  are exact, need no multiply at run time (a binary search: 9 comparisons at 8 bits) and serve every
  output format with one code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adfq_sim.formats import OUTLIER_MAX, OUTLIER_MIN
from adfq_sim.intsim.dyadic import dyadic, requantize

INT31 = (1 << 31) - 1  # |acc| bound of the dyadic rule (int32 accumulators)

# Softmax exp: K fractional bits of the base-2 exponent (its rounding moves exp by < 2**-(K+1) * ln 2,
# 3.3e-7), and 2**-r for r in [0, 1) as the product of two Q30 tables over the high and low halves of
# its K bits. Why tables: a log-sqrt2 code flips where p crosses a threshold, and one flip changes a
# probability by 41 %; I-BERT's second-order polynomial (0.27 % error, refitted) flipped 0.5 % of the
# 8-bit log codes of the demo against the float softmax, the tables flip almost none.
EXP_FRAC_BITS = 20
EXP_LO_BITS = 10
EXP_ONE_BITS = 30  # exp values and probabilities are Q30: 1.0 == 2**30
EXP_TABLE_HI = np.floor(2.0 ** (EXP_ONE_BITS - np.arange(1 << (EXP_FRAC_BITS - EXP_LO_BITS))
                                / 2.0 ** (EXP_FRAC_BITS - EXP_LO_BITS)) + 0.5).astype(np.int64)
EXP_TABLE_LO = np.floor(2.0 ** (EXP_ONE_BITS - np.arange(1 << EXP_LO_BITS) / 2.0**EXP_FRAC_BITS) + 0.5
                        ).astype(np.int64)
EXP_MAX_Z = 32  # 2**-32 in Q30 rounds to 0: larger exponents are clamped here
SOFTMAX_INPUT_MAX = (1 << 30) - 1  # |score| bound, so row max - score < 2**31
SUM_RECIP_BITS = 61  # probability = e * floor(2**61 / sum) >> 31 (Q30)


@dataclass(frozen=True, eq=False)
class UniformOutput:
    """Asymmetric uniform codes clamp(round(v / scale) + zp, 0, qmax) of a fixed-point value v.

    The dyadic (m, s) hold 2**-frac_bits / scale per token (arrays of length T); the code is
    requantize(acc, m, s, -zp, qmax - zp) + zp, i.e. the zero-point is added after the rule.
    """

    m: np.ndarray
    s: np.ndarray
    zero_point: np.ndarray
    qmax: int


@dataclass(frozen=True, eq=False)
class StepOutput:
    """Codes of a non-decreasing step function of a fixed-point value: codes[#{k : v >= thresholds[k]}].

    Serves outputs that are neither uniform nor log (PTQ4ViT's twin-uniform softmax): the thresholds
    (ascending) are found at export by bisection of the float quantizer, so the integer op equals it.
    """

    thresholds: np.ndarray
    codes: np.ndarray


@dataclass(frozen=True, eq=False)
class LogOutput:
    """Log codes of a fixed-point value v >= 0: q = #{k : v <= thresholds[k]}, zero_code if v < zero_below.

    thresholds[k - 1] = floor(delta * base**-(k - 1/2) * 2**frac_bits) for k = 1 .. zero_code - 1
    (descending): rounding -log_base(v / delta) half up and clamping to [0, zero_code - 1] is exactly
    this count. zero_below = ceil(half the smallest level * 2**frac_bits) is LogQuantizer's zero rule.
    """

    thresholds: np.ndarray
    zero_below: int
    zero_code: int


def uniform_output(scale: np.ndarray | float, zero_point: np.ndarray | int, bits: int, frac_bits: int) -> UniformOutput:
    """Constants to map a value held with `frac_bits` fractional bits to uniform codes (per tensor or token)."""
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    zp = np.broadcast_to(np.atleast_1d(np.asarray(zero_point, dtype=np.int64)), scale.shape).copy()
    ms = [dyadic(2.0**-frac_bits / float(t)) for t in scale]
    return UniformOutput(np.array([m for m, _ in ms], np.int64), np.array([s for _, s in ms], np.int64),
                         zp, (1 << bits) - 1)


def log_output(delta: float, log2_base: float, bits: int, frac_bits: int) -> LogOutput:
    """LogQuantizer's codes (shift 0) as integer thresholds on a value with `frac_bits` fractional bits."""
    zero_code = (1 << bits) - 1
    k = np.arange(1, zero_code, dtype=np.float64)
    thresholds = np.floor(delta * np.exp2(-(k - 0.5) * log2_base + frac_bits)).astype(np.int64)
    zero_below = math.ceil(delta * 2.0 ** (-(zero_code - 1) * log2_base - 1 + frac_bits))
    return LogOutput(thresholds, zero_below, zero_code)


def uniform_codes(acc: np.ndarray, out: UniformOutput, token: np.ndarray) -> np.ndarray:
    """Reference uniform output: acc [M, C] int64, token [M] the per-row index into the output constants."""
    m, s, zp = (a[token][:, None] for a in (out.m, out.s, out.zero_point))
    return requantize(acc, m, s, -zp, out.qmax - zp) + zp


def log_codes(value: np.ndarray, out: LogOutput) -> np.ndarray:
    """Reference log output: count the thresholds at or above each value."""
    codes = (value[..., None] <= out.thresholds).sum(axis=-1)
    return np.where(value < out.zero_below, out.zero_code, codes)


# ---------------------------------------------------------------------------------------------- isqrt


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) element-wise for int64 n >= 0, by Python's exact math.isqrt."""
    n = np.asarray(n, dtype=np.int64)
    if (n < 0).any():
        raise ValueError("isqrt of a negative number")
    return np.array([math.isqrt(int(v)) for v in n.ravel()], dtype=np.int64).reshape(n.shape)


# ------------------------------------------------------------------------------------------ LayerNorm


@dataclass(frozen=True, eq=False)
class LayerNormConstants:
    """Integer LayerNorm over C channels, up to its int32 output acc; see the module docstring.

    eps_int: E; frac_bits: F; recip_bits: Q of the per-row reciprocal floor(2**Q / R); norm_max: the
    clamp of n; gamma, beta: G_c = round(gamma * 2**gamma_bits), B_c = round(beta * 2**(F + gamma_bits))
    so n * G + B (int64) holds the LayerNorm output with F + gamma_bits fractional bits, and
    acc = (n * G + B) >> acc_shift (rounded half up) brings it inside |acc| < 2**31 with
    F + gamma_bits - acc_shift fractional bits (`acc_frac`); input_max: the largest |x| the bounds
    were proven for.
    """

    channels: int
    input_max: int
    eps_int: int
    frac_bits: int
    recip_bits: int
    norm_max: int
    gamma_bits: int
    acc_shift: int
    gamma: np.ndarray
    beta: np.ndarray

    @property
    def acc_frac(self) -> int:
        return self.frac_bits + self.gamma_bits - self.acc_shift


@dataclass(frozen=True, eq=False)
class TokenCodes:
    """Codes of a fixed-point value (LayerNorm's acc) for the next uniform or PPOQ quantizer.

    out: the uniform rule per token position (row r uses entry r % T); outlier_threshold: PPOQ's alpha
    on the acc grid (|acc| > it is an outlier: its dense code is the zero-point), -1 without outliers;
    outlier_m, outlier_s: per token, the dyadic rule from acc to int16 outlier codes (empty without).
    """

    out: UniformOutput
    outlier_threshold: int
    outlier_m: np.ndarray
    outlier_s: np.ndarray

    @property
    def has_outliers(self) -> bool:
        return self.outlier_threshold >= 0


def _norm_max(channels: int, frac_bits: int) -> int:
    """A bound of |y| * 2**F: |y| <= sqrt(C - 1) for the population variance."""
    return math.isqrt((channels - 1) << (2 * frac_bits)) + 1


MAX_GAMMA_BITS = 24  # G's fractional bits: past 2**-24 relative, gamma's rounding no longer matters


def _fold_gamma(gamma: np.ndarray, beta: np.ndarray, frac_bits: int,
                channels: int) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """(F, gamma_bits, acc_shift, G, B): the most gamma bits (<= MAX_GAMMA_BITS) such that
    |n * G + B| < 2**62 for |n| <= norm_max, and the right shift that brings that bound under 2**31."""
    norm_max = _norm_max(channels, frac_bits)
    for gamma_bits in range(MAX_GAMMA_BITS, -40, -1):
        g = np.floor(gamma * 2.0**gamma_bits + 0.5).astype(np.int64)
        b = np.floor(beta * 2.0 ** (frac_bits + gamma_bits) + 0.5).astype(np.int64)
        bound = norm_max * int(np.abs(g).max()) + int(np.abs(b).max())
        if bound < 1 << 62:
            acc_shift = max(0, (bound + 1).bit_length() - 31)  # (bound + 2**(k-1)) >> k <= INT31
            return frac_bits, gamma_bits, acc_shift, g, b
    raise ValueError("LayerNorm gamma / beta out of any representable range")


def layernorm_constants(channels: int, input_scale: float, gamma: np.ndarray, beta: np.ndarray, eps: float,
                        input_bits: int) -> LayerNormConstants:
    """Export: input codes |x| <= 2**(input_bits - 1) at input_scale (refused where the variance could
    overflow int64)."""
    c = channels
    input_max = 1 << (input_bits - 1)
    eps_int = math.floor(eps / input_scale**2 * c * c + 0.5)
    if c * c * input_max * input_max + eps_int >= 1 << 62:
        raise ValueError(f"LayerNorm over {c} channels of {input_bits}-bit inputs overflows int64 variance")
    sqrt_bits = math.isqrt(c).bit_length()  # sqrt(C) <= 2**sqrt_bits
    recip_bits = 62 - sqrt_bits  # |d * reciprocal| <= sqrt(C) * 2**Q < 2**63
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    # n rounds with error 2**-F * |gamma|, G with 2**-gamma_bits * |y| (rms(y) = 1 by construction)
    # and the shift into int32 with 2**(acc_shift - F - gamma_bits): pick F to minimise their sum.
    rms = float(np.sqrt(np.mean(gamma**2)))
    frac_bits, gamma_bits, acc_shift, g, b = min(
        (_fold_gamma(gamma, beta, f, c) for f in range(4, recip_bits - 31)),
        key=lambda t: rms * 2.0 ** -t[0] + 2.0 ** -t[1] + 2.0 ** (t[2] - t[0] - t[1]))
    return LayerNormConstants(c, input_max, eps_int, frac_bits, recip_bits, _norm_max(c, frac_bits), gamma_bits,
                              acc_shift, g, b)


def token_codes_constants(acc_frac: int, out_scale: np.ndarray | float, out_zero_point: np.ndarray | int,
                          out_bits: int, alpha: float | None = None,
                          outlier_step: np.ndarray | float | None = None) -> TokenCodes:
    """Export: codes of a value with acc_frac fractional bits; out_scale / out_zero_point scalars or per
    token position [T]; alpha: PPOQ's outlier threshold on the value, or None; outlier_step: the step
    of the int16 outlier codes (scalar or per token), required with alpha."""
    if (alpha is None) != (outlier_step is None):
        raise ValueError("alpha and outlier_step go together (PPOQ outliers) or not at all")
    threshold = -1 if alpha is None else math.floor(alpha * 2.0**acc_frac)
    outlier_m = outlier_s = np.zeros(0, np.int64)
    if outlier_step is not None:
        rules = [dyadic(2.0**-acc_frac / float(step)) for step in np.atleast_1d(outlier_step)]
        outlier_m, outlier_s = (np.array(v, np.int64) for v in zip(*rules))
    return TokenCodes(uniform_output(out_scale, out_zero_point, out_bits, acc_frac), threshold, outlier_m, outlier_s)


def check_codes(x: np.ndarray, limit: int, name: str) -> None:
    """x must be int32 [rows, channels] codes with |x| <= limit (the range the export proved).

    min / max rather than abs: no int64 copy (the check runs before every Numba kernel too)."""
    check_code_shape(x, name)
    if x.size and (int(x.min()) < -limit or int(x.max()) > limit):
        raise ValueError(outside_range(name, limit))


def check_code_shape(x: np.ndarray, name: str) -> None:
    """x must be int32 [rows, channels]: `check_codes` less the range (for a kernel that checks it on its way)."""
    if x.ndim != 2 or x.dtype != np.int32 or x.shape[1] == 0:
        raise ValueError(f"{name} takes int32 codes of shape [rows, channels >= 1], got {x.dtype} {x.shape}")


def outside_range(name: str, limit: int) -> str:
    """The message of an input past the range export proved."""
    return f"{name} input outside the exported range |x| <= {limit}"


def layernorm_acc(x: np.ndarray, c: LayerNormConstants) -> np.ndarray:
    """acc = (n * G + B) >> acc_shift: the LayerNorm output with acc_frac fractional bits (int64 values
    inside int32)."""
    x = np.asarray(x)
    check_codes(x, c.input_max, "layernorm")
    x = x.astype(np.int64)
    if x.shape[1] != c.channels:
        raise ValueError(f"layernorm exported for {c.channels} channels, got {x.shape[1]}")
    total = x.sum(axis=1, keepdims=True)
    var = c.channels * (x * x).sum(axis=1, keepdims=True) - total * total + c.eps_int  # C^2 (var + eps)
    k = np.maximum(0, (62 - np.array([[int(v).bit_length()] for v in var[:, 0]], np.int64)) // 2)
    root = isqrt(var << (2 * k))  # in [2**30, 2**31), or 0 for a constant row with E = 0 (then n = 0)
    recip = (np.int64(1) << c.recip_bits) // np.maximum(root, 1)
    shift = c.recip_bits - c.frac_bits - k
    n = (c.channels * x - total) * recip + (np.int64(1) << (shift - 1)) >> shift
    n = np.clip(n, -c.norm_max, c.norm_max)
    wide = n * c.gamma + c.beta
    return wide if c.acc_shift == 0 else (wide + (np.int64(1) << (c.acc_shift - 1))) >> c.acc_shift


def token_codes(acc: np.ndarray, t: TokenCodes) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes (int32 [M, C]) of acc rows, outliers holding the zero-point there, and with PPOQ the
    outliers' int16 codes as an int32 [M, C] matrix, 0 elsewhere (else None)."""
    acc = np.asarray(acc, np.int64)
    token = np.arange(acc.shape[0]) % len(t.out.m)
    codes = uniform_codes(acc, t.out, token)
    if not t.has_outliers:
        return codes.astype(np.int32), None
    mask = np.abs(acc) > t.outlier_threshold
    codes = np.where(mask, t.out.zero_point[token][:, None], codes)
    outliers = requantize(acc, t.outlier_m[token % len(t.outlier_m)][:, None],
                          t.outlier_s[token % len(t.outlier_s)][:, None], OUTLIER_MIN, OUTLIER_MAX)
    return codes.astype(np.int32), np.where(mask, outliers, 0).astype(np.int32)


def layernorm(x: np.ndarray, c: LayerNormConstants, t: TokenCodes) -> tuple[np.ndarray, np.ndarray | None]:
    """LayerNorm of residual rows straight into the next quantizer's codes (`token_codes`)."""
    return token_codes(layernorm_acc(x, c), t)


# -------------------------------------------------------------------------------------------- softmax


@dataclass(frozen=True, eq=False)
class SoftmaxConstants:
    """Integer softmax: a = min(row max - x, a_max), u = requantize(a, m, s, 0, EXP_MAX_Z << K).

    a_max: where u already saturates (keeps a inside the rule's int32 range); out: UniformOutput (per
    tensor, on Q30 probabilities), LogOutput or StepOutput (thresholds in Q30).
    """

    a_max: int
    m: int
    s: int
    out: UniformOutput | LogOutput | StepOutput


def softmax_constants(input_scale: float, out: UniformOutput | LogOutput | StepOutput) -> SoftmaxConstants:
    """Export: scores are int32 codes at input_scale; build `out` with frac_bits=EXP_ONE_BITS."""
    ratio = input_scale * math.log2(math.e) * (1 << EXP_FRAC_BITS)
    m, s = dyadic(ratio)
    u_max = EXP_MAX_Z << EXP_FRAC_BITS
    a_max = min(INT31, math.ceil((u_max + 1) / ratio))
    if a_max < INT31 and (a_max * m + (1 << (s - 1))) >> s < u_max:
        raise ValueError("softmax exponent clamp not reached at a_max")
    return SoftmaxConstants(a_max, m, s, out)


def exp2_fraction(f: np.ndarray) -> np.ndarray:
    """2**(-f / 2**K) in Q30 for 0 <= f < 2**K: the two table entries' product, rounded half up."""
    f = np.asarray(f, np.int64)
    hi, lo = EXP_TABLE_HI[f >> EXP_LO_BITS], EXP_TABLE_LO[f & ((1 << EXP_LO_BITS) - 1)]
    return (hi * lo + (np.int64(1) << (EXP_ONE_BITS - 1))) >> EXP_ONE_BITS


def gap_exponentials(a: np.ndarray, c: SoftmaxConstants) -> np.ndarray:
    """exp(-a) in Q30 (int64) for gaps 0 <= a <= a_max below the row max: u = requantize(a), then
    2**-(u / 2**K) as exp2_fraction of u's fraction divided by 2**z, z = u >> K, rounded half up."""
    u = requantize(np.asarray(a, np.int64), c.m, c.s, 0, EXP_MAX_Z << EXP_FRAC_BITS)
    z = u >> EXP_FRAC_BITS
    e = exp2_fraction(u & ((1 << EXP_FRAC_BITS) - 1))
    return ((e << 1) + (np.int64(1) << z)) >> (z + 1)


def softmax_probabilities(x: np.ndarray, c: SoftmaxConstants) -> np.ndarray:
    """Row-wise softmax of int32 scores [M, N] as Q30 integers (int64)."""
    x = np.asarray(x)
    check_codes(x, SOFTMAX_INPUT_MAX, "softmax")
    x = x.astype(np.int64)
    e = gap_exponentials(np.minimum(x.max(axis=1, keepdims=True) - x, c.a_max), c)
    recip = (np.int64(1) << SUM_RECIP_BITS) // e.sum(axis=1, keepdims=True)
    return e * recip + (np.int64(1) << 30) >> 31


def softmax(x: np.ndarray, c: SoftmaxConstants) -> np.ndarray:
    """Output codes (int32 [M, N]) of the next quantizer: uniform per tensor, log or a step table."""
    p = softmax_probabilities(x, c)
    if isinstance(c.out, LogOutput):
        return log_codes(p, c.out).astype(np.int32)
    if isinstance(c.out, StepOutput):
        return step_codes(p, c.out.thresholds, c.out.codes).astype(np.int32)
    return uniform_codes(p, c.out, np.zeros(p.shape[0], np.int64)).astype(np.int32)


# ----------------------------------------------------------------------------------------------- GELU

GELU_ARGMIN = -0.7517915  # GELU decreases below it and increases above it (exact erf GELU)


@dataclass(frozen=True, eq=False)
class GeluConstants:
    """GELU as a step function of the int32 accumulator: code = codes[#{k : acc >= thresholds[k]}].

    thresholds (int64, ascending) are the accumulators where the next quantizer's code of GELU changes.
    """

    thresholds: np.ndarray
    codes: np.ndarray


def _change_points(code_of: Callable[[np.ndarray], np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Every a in (lo, hi] with code_of(a) != code_of(a - 1), for code_of monotone on [lo, hi].

    Bisection of all intervals at once: an interval whose ends share a code is constant (monotone).
    """
    lo_a, hi_a = np.array([lo], np.int64), np.array([hi], np.int64)
    found = []
    while lo_a.size:
        keep = code_of(lo_a) != code_of(hi_a)
        lo_a, hi_a = lo_a[keep], hi_a[keep]
        unit = hi_a - lo_a == 1
        found.append(hi_a[unit])
        lo_a, hi_a = lo_a[~unit], hi_a[~unit]
        mid = (lo_a + hi_a) // 2
        lo_a, hi_a = np.concatenate([lo_a, mid]), np.concatenate([mid, hi_a])
    return np.sort(np.concatenate(found))


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(v)


def gelu_constants(input_scale: float, quantize: Callable[[np.ndarray], np.ndarray]) -> GeluConstants:
    """Export: fc1 accumulators at input_scale; `quantize` maps float64 GELU outputs to the next codes.

    GELU and the quantizer are evaluated in float64 at export only; each monotone branch of
    acc -> code is bisected for its change points, so the integer op equals the float one exactly at
    every int32 accumulator (up to the float evaluation itself).
    """
    def code_of(acc: np.ndarray) -> np.ndarray:
        v = acc.astype(np.float64) * input_scale
        return np.asarray(quantize(v * 0.5 * (1.0 + _erf(v / math.sqrt(2.0))))).astype(np.int64)

    lowest = -INT31
    split = min(max(math.floor(GELU_ARGMIN / input_scale), lowest), INT31 - 1)  # last acc left of the minimum
    left, right = code_of(np.array([split, split + 1], np.int64))
    step = np.array([split + 1] if left != right else [], np.int64)
    thresholds = np.concatenate([_change_points(code_of, lowest, split), step,
                                 _change_points(code_of, split + 1, INT31)])
    codes = code_of(np.concatenate([[lowest], thresholds]))
    return GeluConstants(thresholds, codes.astype(np.int32))


def step_output(quantize: Callable[[np.ndarray], np.ndarray], frac_bits: int, hi: int) -> StepOutput:
    """Export: the StepOutput of a non-decreasing `quantize` (float64 values -> codes) of v / 2**frac_bits
    for integers v in [0, hi]."""
    def code_of(v: np.ndarray) -> np.ndarray:
        return np.asarray(quantize(v.astype(np.float64) * 2.0**-frac_bits)).astype(np.int64)

    thresholds = _change_points(code_of, 0, hi)
    return StepOutput(thresholds, code_of(np.concatenate([[0], thresholds]).astype(np.int64)).astype(np.int32))


def step_codes(acc: np.ndarray, thresholds: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Reference step function: codes[number of thresholds <= acc]."""
    return codes[(np.asarray(acc, np.int64)[..., None] >= thresholds).sum(axis=-1)]


def gelu(acc: np.ndarray, c: GeluConstants) -> np.ndarray:
    """Output codes (int32, the shape of acc) of GELU on int32 accumulators."""
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"gelu takes int32 accumulators, got {acc.dtype}")
    return step_codes(acc, c.thresholds, c.codes)
