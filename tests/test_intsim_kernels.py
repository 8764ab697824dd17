"""Integer GEMM kernels (and GELU's step lookup): Numba == int64 reference bit for bit, on the VNNI and the
portable paths, and the accumulator bounds hold and are tight."""

from __future__ import annotations

from unittest import mock

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adfq_sim.intsim import kernels, log_gemm, nonlinear, nonlinear_reference, reference
from adfq_sim.intsim.bounds import (INT32_MAX, AccBound, AccumulatorOverflowError, check_int32, dense_bound,
                                    log_shift_bound)
from adfq_sim.intsim.dyadic import dyadic_array, requantize
from adfq_sim.intsim.execute_reference import outlier_sum
from adfq_sim.formats import LOG_BASES, OUTLIER_MAX, OUTLIER_MIN

SETTINGS = settings(max_examples=60, deadline=None)


def code_range(bits: int, signed: bool, rng: np.random.Generator) -> tuple[int, int]:
    """Signed codes, or unsigned codes minus a random zero-point."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    zero_point = int(rng.integers(0, 1 << bits))
    return -zero_point, (1 << bits) - 1 - zero_point


def worstish(rng: np.random.Generator, lo: int, hi: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Uniform codes, half of them pushed to the extremes of [lo, hi]."""
    x = rng.integers(lo, hi + 1, size=shape)
    extreme = rng.random(shape) < 0.5
    return np.where(extreme, np.where(rng.random(shape) < 0.5, lo, hi), x).astype(dtype)


def storage(lo: int, hi: int, rng: np.random.Generator):
    """int8 when the codes fit (either storage is valid), else int16."""
    return np.int8 if -128 <= lo and hi <= 127 and rng.random() < 0.5 else np.int16


def assert_within(values: np.ndarray, bound: AccBound) -> None:
    assert (values >= bound.lo).all() and (values <= bound.hi).all()


# (G, M, N, K, shared): G = 0 for 2-D A; shared: one W [N, K] for all groups, else W [G, N, K]
# (K past 64 and 128: the vpshufb fill of 4-bit log codes takes 64 codes at a time, the rest one by one)
shapes = st.tuples(st.sampled_from([0, 1, 3]), st.integers(1, 37), st.integers(1, 23), st.integers(1, 150),
                   st.booleans())


# dense shapes: N past one and two VNNI tiles (64 columns), K not a multiple of 4, M not one of TILE_ROWS
dense_shapes = st.tuples(st.sampled_from([0, 1, 3]), st.integers(1, 37), st.integers(1, 140), st.integers(1, 90),
                         st.booleans())


@SETTINGS
@given(shape=dense_shapes, a_bits=st.integers(2, 8), w_bits=st.integers(2, 8), a_signed=st.booleans(),
       w_signed=st.booleans(), with_bias=st.booleans(), portable=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dense_kernel_equals_reference(shape, a_bits, w_bits, a_signed, w_signed, with_bias, portable,
                                       seed) -> None:
    groups, m, n, k, shared = shape
    per_group = bool(groups) and not shared
    rng = np.random.default_rng(seed)
    a_lo, a_hi = code_range(a_bits, a_signed, rng)
    w_lo, w_hi = code_range(w_bits, w_signed, rng)
    a = worstish(rng, a_lo, a_hi, ((groups,) if groups else ()) + (m, k), storage(a_lo, a_hi, rng))
    w = worstish(rng, w_lo, w_hi, ((groups,) if per_group else ()) + (n, k), storage(w_lo, w_hi, rng))
    bias = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32) if with_bias else None
    with mock.patch.object(kernels, "VNNI", kernels.VNNI and not portable):
        got = kernels.dense_gemm(a, w, bias)
    want = reference.dense_gemm(a, w, bias)
    assert got.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    bound = dense_bound((a_lo, a_hi), np.full((1, k), w_lo), np.full((1, k), w_hi), bias) if per_group else \
        dense_bound((a_lo, a_hi), w, None, bias)
    assert_within(want, bound)


def shifted_operands(rng: np.random.Generator, groups: int, m: int, n: int, k: int, wide: bool):
    """A with values spanning 256 integers anywhere in int16 (8-bit codes minus any zero-point), W [N, K]
    whose rows span 256 integers each around their own centre (per-channel zero-points), int16; `wide`
    stretches one row of A or W past 256 (the portable path)."""
    a_lo = int(rng.integers(-600, 400))
    a = worstish(rng, a_lo, a_lo + 255, ((groups,) if groups else ()) + (m, k), np.int16)
    centre = rng.integers(-300, 300, (n, 1))
    w = (centre + worstish(rng, -128, 127, (n, k), np.int64)).astype(np.int16)
    if wide and rng.random() < 0.5:
        a.reshape(-1, k)[0, 0] = a_lo + 256
    elif wide:
        w[0, 0] = centre[0, 0] + 300
    return a, w


@SETTINGS
@given(shape=dense_shapes, wide=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dense_kernel_shifts_operands_exactly(shape, wide, with_bias, seed) -> None:
    """Operands outside uint8 / int8 but spanning 256 values: the VNNI path's shifts fold back exactly."""
    groups, m, n, k, _ = shape
    rng = np.random.default_rng(seed)
    a, w = shifted_operands(rng, groups, m, n, k, wide)
    bias = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32) if with_bias else None
    np.testing.assert_array_equal(kernels.dense_gemm(a, w, bias), reference.dense_gemm(a, w, bias))


@SETTINGS
@given(shape=dense_shapes, rule_shape=st.sampled_from(["tensor", "channel", "token", "token x channel"]),
       wide=st.booleans(), portable=st.booleans(), bits=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
def test_dense_requant_equals_reference(shape, rule_shape, wide, portable, bits, seed) -> None:
    """Per tensor [1], channel [N], token [T, 1] or token x channel [T, N] (row r uses rule row r % T)."""
    groups, m, n, k, _ = shape
    rng = np.random.default_rng(seed)
    a, w = shifted_operands(rng, groups, m, n, k, wide)
    bias = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32)
    tokens = int(rng.integers(1, 8))
    rule = {"tensor": (1,), "channel": (n,), "token": (tokens, 1), "token x channel": (tokens, n)}[rule_shape]
    acc = reference.dense_gemm(a, w, bias).reshape(-1, n)
    ms = rng.integers(1 << 30, 1 << 31, rule)
    # acc * m >> s spans about the code range: mostly distinct codes per rule, a few clamped
    ss = int(np.abs(acc).max()).bit_length() + 31 - bits + rng.integers(-2, 3, rule)
    zero_point, lo, hi = int(rng.integers(0, 1 << bits)), 0, (1 << bits) - 1
    with mock.patch.object(kernels, "VNNI", kernels.VNNI and not portable):
        got = kernels.dense_requant(a, w, bias, ms, ss, zero_point, lo, hi)
    row_rule = np.arange(len(acc)) % tokens if len(rule) == 2 else slice(None)
    want = requantize(acc, ms[row_rule], ss[row_rule], lo - zero_point, hi - zero_point) + zero_point
    assert got.dtype == np.int32 and got.shape == a.shape[:-1] + (n,)
    np.testing.assert_array_equal(got.reshape(-1, n), want)


@pytest.mark.parametrize("portable", [False, True])
def test_dense_requant_per_token_rules_run_on_across_groups(portable: bool) -> None:
    """Row r of the [G * M, N] output uses rule row r % T, also when M is not a multiple of T."""
    rng = np.random.default_rng(4)
    a, w = rng.integers(-8, 8, (3, 5, 16)).astype(np.int16), rng.integers(-8, 8, (70, 16)).astype(np.int8)
    ms, ss = rng.integers(1 << 30, 1 << 31, (3, 70)), np.full((3, 70), 36)
    with mock.patch.object(kernels, "VNNI", kernels.VNNI and not portable):
        got = kernels.dense_requant(a, w, None, ms, ss, 8, 0, 15)
    rows = np.arange(15) % 3
    want = requantize(reference.dense_gemm(a, w).reshape(15, 70), ms[rows], ss[rows], -8, 7) + 8
    np.testing.assert_array_equal(got.reshape(15, 70), want)


def test_dense_requant_refuses_bad_rules() -> None:
    a, w = np.zeros((4, 5), np.int16), np.zeros((3, 5), np.int8)
    with pytest.raises(ValueError, match="m and s"):
        kernels.dense_requant(a, w, None, np.ones(2, np.int64), np.ones(2, np.int64), 0, 0, 15)
    with pytest.raises(ValueError, match="m and s"):
        kernels.dense_requant(a, w, None, np.ones(3, np.int64), np.ones(1, np.int64), 0, 0, 15)
    with pytest.raises(ValueError, match="m and s"):
        kernels.dense_requant(a, w, None, np.ones((2, 2), np.int64), np.ones((2, 2), np.int64), 0, 0, 15)


@pytest.mark.skipif(not kernels.VNNI, reason="Numba's target has no AVX-512 VNNI")
def test_vnni_tile_is_vpdpbusd_with_its_correction_terms() -> None:
    """One tile, one step: out[r, c] = sum_q A[r, q] W[c, q] + col[c] + row[r] * scale[c], by vpdpbusd."""
    rng = np.random.default_rng(0)
    rows, cols = kernels.TILE_ROWS, kernels.TILE_COLS
    a = rng.integers(0, 256, (rows, 4)).astype(np.uint8)
    w = rng.integers(-128, 128, (cols, 4)).astype(np.int8)
    col, scale = rng.integers(-1000, 1000, (2, cols)).astype(np.int32)
    row = rng.integers(-1000, 1000, rows).astype(np.int32)
    out = np.zeros((rows, cols), np.int32)

    @numba.njit
    def tile(a, w, col, scale, row, out):
        kernels._vnni_tile(a, 0, 4, w, 0, 1, col, scale, 0, row, 0, out, 0, out.shape[1])

    tile(a, w.reshape(1, -1), col, scale, row, out)
    want = a.astype(np.int64) @ w.T.astype(np.int64) + col + row[:, None].astype(np.int64) * scale
    np.testing.assert_array_equal(out, want)
    assert "vpdpbusd" in tile.inspect_asm(tile.signatures[0])


i32 = np.iinfo(np.int32)
thresholds_spans = st.sampled_from([40, 5000, nonlinear.GELU_TABLE_BYTES // 2 - 2, nonlinear.GELU_TABLE_BYTES - 2,
                                    nonlinear.GELU_TABLE_BYTES + 2, 1 << 31, 1 << 36])


@SETTINGS
@given(count=st.integers(0, 40), span=thresholds_spans, duplicates=st.booleans(), int8_codes=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_gelu_equals_reference_on_every_step(count, span, duplicates, int8_codes, seed) -> None:
    """Sorted thresholds (none, repeated, past int32, spanning the code table's limit, int8 or int16, or far
    more): the table and the bucketed search both give codes[#{thresholds <= acc}] at each step's edges and at int32's
    ends."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(-span, span // 4 + 1))
    thresholds = np.sort(rng.integers(start, start + span, count, endpoint=True))
    if duplicates and count:
        thresholds = np.sort(np.concatenate([thresholds, thresholds[rng.integers(0, count, 3)]]))
    codes = rng.integers(*((-128, 128) if int8_codes else (-300, 300)), thresholds.size + 1).astype(np.int32)
    consts = nonlinear_reference.GeluConstants(thresholds=thresholds.astype(np.int64), codes=codes)
    edges = (thresholds[:, None] + np.arange(-2, 3)).ravel()
    acc = np.concatenate([edges, rng.integers(start - 10, start + span + 10, 2000), [i32.min, i32.max, 0]])
    acc = np.clip(acc, i32.min, i32.max).astype(np.int32).reshape(-1, 1)
    np.testing.assert_array_equal(nonlinear.gelu(acc, consts), nonlinear_reference.gelu(acc, consts))


def random_outliers(rng: np.random.Generator, m: int, k: int, count: int):
    """Distinct positions, as PPOQ produces them."""
    positions = rng.choice(m * k, size=min(count, m * k), replace=False)
    rows, cols = (positions // k).astype(np.int32), (positions % k).astype(np.int32)
    codes = worstish(rng, OUTLIER_MIN, OUTLIER_MAX, rows.shape, np.int16)
    return rows, cols, codes


@SETTINGS
@given(shape=shapes, a_bits=st.integers(2, 8), w_bits=st.integers(2, 8), w_signed=st.booleans(),
       outliers=st.integers(0, 60), per=st.sampled_from(["tensor", "channel", "token"]), portable=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_outlier_path_equals_reference(shape, a_bits, w_bits, w_signed, outliers, per, portable, seed) -> None:
    """PPOQ's fused accumulator (A @ W^T << shift, the outliers' products, the per-token bias, saturation)
    and its codes by a rule in the same epilogue equal the reference's composition of the same parts, on the
    VNNI tile and on the portable path."""
    _, m, n, k, _ = shape
    rng = np.random.default_rng(seed)
    a_lo, a_hi = code_range(a_bits, False, rng)  # PPOQ: unsigned codes minus the token's zero-point
    w_lo, w_hi = code_range(w_bits, w_signed, rng)
    a = worstish(rng, a_lo, a_hi, (m, k), np.int16)
    w = worstish(rng, w_lo, w_hi, (n, k), storage(w_lo, w_hi, rng))
    rows, cols, codes = random_outliers(rng, m, k, outliers)
    a[rows, cols] = 0  # the dense code holds the zero-point where an outlier was taken out
    matrix = np.zeros((m, k), np.int32)
    matrix[rows, cols] = codes
    shift = int(rng.integers(0, 8))
    bias = rng.integers(-(1 << 30), 1 << 30, (int(rng.integers(1, 4)), n))
    rule_shape = {"tensor": (1,), "channel": (n,), "token": (int(rng.integers(1, 4)), n)}[per]
    rule_m, rule_s = dyadic_array(np.exp(rng.uniform(-21, -12, rule_shape)))
    zp = int(rng.integers(0, 16))
    with mock.patch.object(kernels, "VNNI", kernels.VNNI and not portable):
        for saturated in (True, False):
            got = kernels.outlier_sum(a, w, shift, matrix, bias, saturated)
            want = outlier_sum(a, w, shift, matrix, bias, saturated)
            np.testing.assert_array_equal(got, want)
            assert got.dtype == (np.int32 if saturated else np.int64)
        # a rule needs |acc| < 2**31 (int64 products): the saturated sum, as export requires of PPOQ
        # in two slices of columns (as q, k, v), the second by a per-tensor rule
        cut = int(rng.integers(1, n)) if n > 1 else n
        acc = reference.saturate(want)
        rules = [(0, cut, rule_m[..., :cut] if per != "tensor" else rule_m, rule_s[..., :cut] if per != "tensor"
                  else rule_s, zp, 0, 255)] + ([(cut, n, rule_m.ravel()[:1], rule_s.ravel()[:1], 3, -7, 9)] if cut < n
                                               else [])
        codes_got = kernels.outlier_requant(a, w, shift, matrix, bias, True, rules)
        for (start, stop, r_m, r_s, r_zp, lo, hi), got in zip(rules, codes_got, strict=True):
            np.testing.assert_array_equal(got, dyadic_requant_rows(acc[:, start:stop], r_m, r_s, r_zp, lo, hi))


@pytest.mark.parametrize("portable", [False, True])
def test_outlier_products_switch_to_int64_when_a_row_could_wrap_int32(portable: bool) -> None:
    """A row's outlier products are summed in int32 only when their bound fits: int16 weights at the extremes with
    three extreme outliers in a row sum to ~3.2e9 (a wrapped int32 sum would differ); int8 weights stay exact."""
    m, k, n = 5, 8, 6
    for w_value in (-(1 << 15), 127):
        w = np.full((n, k), w_value, np.int16 if w_value < -128 else np.int8)
        matrix = np.zeros((m, k), np.int32)
        matrix[2, :3] = OUTLIER_MIN  # 3 * 32768 * 32768 > 2**31
        matrix[4, 5] = OUTLIER_MAX
        a = np.zeros((m, k), np.int16)
        bias = np.zeros((1, n), np.int64)
        with mock.patch.object(kernels, "VNNI", kernels.VNNI and not portable):
            np.testing.assert_array_equal(kernels.outlier_sum(a, w, 0, matrix, bias, False),
                                          outlier_sum(a, w, 0, matrix, bias, False))
    with pytest.raises(ValueError, match="saturated"):
        kernels.outlier_requant(a, w, 0, matrix, bias, False, [(0, n, np.ones(1, np.int64), np.ones(1, np.int64), 0, 0, 1)])


def dyadic_requant_rows(acc: np.ndarray, m: np.ndarray, s: np.ndarray, zp: int, lo: int, hi: int) -> np.ndarray:
    """The reference rule on an accumulator, a [T, N] rule repeating every T rows."""
    if m.ndim == 2:
        m, s = m[np.arange(len(acc)) % len(m)], s[np.arange(len(acc)) % len(s)]
    return requantize(acc, m, s, lo - zp, hi - zp) + zp


def test_outlier_rows_are_csr_of_the_matrix() -> None:
    """Row pointers, columns and codes of the non-zero entries, row-major, rows without any included."""
    matrix = np.zeros((5, 7), np.int32)
    matrix[1, [0, 6]], matrix[3, 2], matrix[4, 6] = [-32768, 5], 32767, -1
    starts, cols, codes = kernels.outlier_rows(matrix)
    np.testing.assert_array_equal(starts, [0, 0, 2, 2, 3, 4])
    np.testing.assert_array_equal(cols, [0, 6, 2, 6])
    np.testing.assert_array_equal(codes, [-32768, 5, 32767, -1])
    assert codes.dtype == np.int16
    matrix[0, 0] = 1 << 15
    with pytest.raises(ValueError, match="outside int16"):
        kernels.outlier_rows(matrix)


@SETTINGS
@given(shape=shapes, bits=st.integers(2, 8), base=st.sampled_from(sorted(LOG_BASES)), e=st.integers(0, 12),
       b_bits=st.integers(2, 9), b_signed=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_log_shift_kernel_equals_reference(shape, bits, base, e, b_bits, b_signed, with_bias, seed) -> None:
    """Every path of the simulator's log-shift GEMM (the fused VNNI pass, the byte GEMMs where B spans more
    than a byte, the shift loop for large plans) equals the contract, from uint8 or int32 codes."""
    groups, m, n, k, shared = shape
    per_group = bool(groups) and not shared
    rng = np.random.default_rng(seed)
    zero_code = (1 << bits) - 1
    p = rng.integers(0, zero_code + 1, ((groups,) if groups else ()) + (m, k)).astype(np.uint8)
    p[rng.random(p.shape) < 0.2] = 0  # the largest value, the biggest terms
    b_lo, b_hi = code_range(b_bits, b_signed, rng)
    b = worstish(rng, b_lo, b_hi, ((groups,) if per_group else ()) + (n, k), storage(b_lo, b_hi, rng))
    bias = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32) if with_bias else None
    want = reference.log_shift_gemm(p, b, e, base, zero_code, bias)
    np.testing.assert_array_equal(kernels.log_shift_gemm(p, b, e, base, zero_code, bias), want)
    np.testing.assert_array_equal(kernels.log_shift_gemm(p.astype(np.int32), b, e, base, zero_code, bias), want)
    bound = log_shift_bound(np.full((1, k), b_lo), np.full((1, k), b_hi), e, bias) if per_group else \
        log_shift_bound(b, None, e, bias)
    assert_within(want, bound)


@SETTINGS
@given(shape=shapes, bits=st.integers(2, 8), base=st.sampled_from(sorted(LOG_BASES)), e=st.integers(0, 24),
       b_bits=st.integers(2, 9), b_signed=st.booleans(), extremes=st.booleans(), with_bias=st.booleans(),
       vnni=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_log_shift_as_byte_gemms_equals_reference(shape, bits, base, e, b_bits, b_signed, extremes, with_bias, vnni,
                                                   seed) -> None:
    """The dense-GEMM form of `log_gemm` (every plan, however many blocks) equals the contract bit for
    bit, its GEMMs run by the int64 reference or by the int32 kernels."""
    groups, m, n, k, shared = shape
    per_group = bool(groups) and not shared
    rng = np.random.default_rng(seed)
    zero_code = (1 << bits) - 1
    p = rng.integers(0, zero_code + 1, (max(groups, 1), m, k)).astype(np.uint8)
    if extremes:  # the largest terms, the most floored ones and zeros
        p = np.where(rng.random(p.shape) < 0.5, rng.choice([0, max(zero_code - 1, 0), zero_code], p.shape), p
                     ).astype(np.uint8)
    b_lo, b_hi = code_range(b_bits, b_signed, rng)
    b = worstish(rng, b_lo, b_hi, (p.shape[0] if per_group else 1, n, k), np.int16)
    bias = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32) if with_bias else None
    roots = LOG_BASES[base]
    plan = log_gemm.log_shift_plan(log_gemm.code_histogram(p), e, roots, zero_code, log_gemm.bit_length(b))
    want = reference.log_shift_gemm(p, b if per_group else b[0], e, base, zero_code, bias)
    bound = log_shift_bound(np.full((1, k), b_lo), np.full((1, k), b_hi), e, bias)
    dense = kernels.dense_gemm if vnni and (bound.max_abs <= INT32_MAX) else reference.dense_gemm
    got = log_gemm.log_shift_by_gemms(p, b, plan, roots, bias, dense)
    if bound.max_abs <= INT32_MAX:
        np.testing.assert_array_equal(got, want)
    else:  # past int32 only the low 32 bits are promised, as for every int32 kernel
        np.testing.assert_array_equal(got, want.astype(np.int32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_log_codes_as_bytes_and_their_histogram(dtype) -> None:
    """Codes of any integer type come back as uint8 with their exact counts; codes past 0..255 are refused."""
    rng = np.random.default_rng(7)
    p = rng.integers(0, 256, (3, 50, 77)).astype(dtype)
    codes = log_gemm.log_codes(p)
    assert codes.dtype == np.uint8 and codes.shape == p.shape
    np.testing.assert_array_equal(codes, p)
    np.testing.assert_array_equal(log_gemm.code_histogram(codes), np.bincount(p.ravel().astype(np.int64),
                                                                              minlength=256))
    if dtype != np.uint8:
        for bad in (-1, 256):
            p[1, 2, 3] = bad
            with pytest.raises(ValueError, match="outside 0..255"):
                log_gemm.log_codes(p)


def test_log_shift_plan_of_4_bit_codes_is_one_byte_gemm_per_accumulator() -> None:
    """What makes SLQ / log softmax.V fast: 4-bit codes with E >= 7 (exact terms only) need one byte
    GEMM per accumulator, 2**(E - j) spread over one window."""
    counts = np.zeros(256, np.int64)
    counts[:16] = 1
    plan = log_gemm.log_shift_plan(counts, 10, 2, 15, 8)
    assert [(g.lane, g.scale, g.shifts) for g in plan.gemms] == [(0, 3, (0,)), (1, 3, (0,))]
    assert plan.value_of[0] == 1 << 7 and plan.value_of[14] == 1 and plan.gemm_of[15] == -1
    floored = log_gemm.log_shift_plan(np.ones(256, np.int64), 0, 1, 255, 8)  # every code past E: shifts 1..8, the rest as 8
    assert [g.shifts for g in floored.gemms] == [(0,), tuple(range(1, 9))]


@pytest.mark.parametrize("bad", [16, 31, 128, 255])
def test_log_shift_refuses_a_code_past_the_zero_code_inside_a_shuffled_block(bad: int) -> None:
    """4-bit codes are looked up 64 at a time by vpshufb, which reads code & 15 (or 0 from 128): a code past
    the zero code anywhere in such a block is still refused, on every plan path."""
    p = np.zeros((3, 130), np.uint8)
    p[1, 70] = bad
    b = np.ones((5, 130), np.int8)
    for e in (0, 10):
        with pytest.raises(ValueError, match="outside 0 .. the zero code"):
            kernels.log_shift_gemm(p, b, e, "sqrt2", 15)


def test_log_shift_semantics_by_hand() -> None:
    """Base 2 floors (b << E) >> q; base sqrt2 scales the odd accumulator once by 1/sqrt2 (round half up)."""
    b = np.array([[-3, 5, 7, 9]], np.int16)
    p = np.array([[1, 2, 3, 3]], np.uint8)  # base 2: -3/2 -> -2, 5/4 -> 1, the zero code (3) twice -> 0
    for impl in (reference, kernels):
        assert impl.log_shift_gemm(p, b, 0, "2", 3)[0, 0] == -2 + 1
    p = np.array([[0, 1, 3, 4]], np.uint8)  # sqrt2, zero code 15: even -3 + 9/4 -> -3 + 2; odd 5 + 7/2 -> 8
    for impl in (reference, kernels):  # 8 / sqrt2 = 5.66 -> 6
        assert impl.log_shift_gemm(p, b, 0, "sqrt2", 15)[0, 0] == -1 + 6


@pytest.mark.parametrize("m", [1, 197])  # 197 tokens: not a multiple of the row block
def test_dense_bound_is_attained_by_the_extreme_codes(m: int) -> None:
    """Row i drives channel i % n to its bound with the extreme codes."""
    rng = np.random.default_rng(m)
    n, k, a_lo, a_hi = 9, 31, -5, 250
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    w64 = w.astype(np.int64)  # (-1 * int8 -128 would wrap)
    bias = rng.integers(1, 1000, n).astype(np.int32)  # > 0: counted in hi only
    channel = np.arange(m) % n
    bound = dense_bound((a_lo, a_hi), w, None, bias)
    for sign, target in ((1, bound.hi), (-1, bound.lo)):
        a = np.where(sign * w64[channel] > 0, a_hi, a_lo).astype(np.int16)
        acc = kernels.dense_gemm(a, w, bias if sign > 0 else None)
        np.testing.assert_array_equal(acc[np.arange(m), channel], target[channel])


def test_log_shift_bound_is_attained_by_the_extreme_codes() -> None:
    rng = np.random.default_rng(1)
    b = rng.integers(-128, 128, (5, 40)).astype(np.int8)
    bound = log_shift_bound(b, None, 9)
    for base in LOG_BASES:
        for sign, target in ((1, bound.hi), (-1, bound.lo)):
            p = np.where(sign * b.astype(np.int64) > 0, 0, 255).astype(np.uint8)  # code 0 or zero
            acc = kernels.log_shift_gemm(p, b, 9, base, 255)
            np.testing.assert_array_equal(np.diagonal(acc), target)


def test_check_int32_refuses_a_layer_that_could_overflow() -> None:
    w = np.full((3, 4), 127, np.int8)
    assert check_int32(dense_bound((0, 255), w), "blocks.0.fc1") == 4 * 255 * 127
    edge = AccBound(lo=np.zeros(2), hi=np.array([0.0, INT32_MAX]))
    assert check_int32(edge, "x") == INT32_MAX
    with pytest.raises(AccumulatorOverflowError, match=r"blocks\.3\.fc2.*channel 1"):
        check_int32(AccBound(lo=np.zeros(2), hi=np.array([0.0, INT32_MAX + 1.0])), "blocks.3.fc2")
    with pytest.raises(AccumulatorOverflowError, match="attn.v"):
        check_int32(log_shift_bound(np.full((1, 4096), -256), np.full((1, 4096), 255), 20), "attn.v")


def test_invalid_operands_are_refused() -> None:
    a, w = np.zeros((4, 5), np.int16), np.zeros((3, 6), np.int8)
    for impl in (reference, kernels):
        with pytest.raises(ValueError, match="inner dimensions"):
            impl.dense_gemm(a, w)
        for e in (0, 10):  # a plan from the codes present; one for every code (the range checked while filling)
            with pytest.raises(ValueError, match="outside 0 .. the zero code"):
                impl.log_shift_gemm(np.full((2, 6), 16, np.uint8), w, e, "sqrt2", 15)
    with pytest.raises(ValueError, match="out of range"):
        reference.outlier_gemm(np.array([4], np.int32), np.array([0], np.int32), np.array([1], np.int16), w[:, :5], 4)
    with pytest.raises(ValueError, match="need A"):
        kernels.outlier_sum(a, w[:, :5], 0, np.zeros((4, 6), np.int32), np.zeros((1, 3), np.int64), True)
    with pytest.raises(ValueError, match="outside int16"):
        kernels.dense_gemm(np.full((1, 6), 1 << 16, np.int32), w)
