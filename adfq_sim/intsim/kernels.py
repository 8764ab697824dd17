"""The integer GEMMs of the simulator as parallel Numba kernels with int32 accumulators.

Same functions, same semantics as `reference` (read its docstring for the rules); results are int32.
Accumulation is int32 everywhere: callers must have proven the layer's bound with `bounds.check_int32`
first (export does, per layer). An unchecked overflow wraps here and differs from the int64 reference,
which is how tests would see it.

Dense GEMM, two paths. With AVX-512 VNNI on Numba's target (`VNNI`), when A's values span at most 256
integers and so do each row of W's, A is shifted into uint8 and W's rows into int8 and multiplied by
vpdpbusd (64 MACs per instruction; LLVM never forms it from a loop, so `_vnni_tile` emits it), the
shifts folded back as correction terms. int32 arithmetic is modular, so every wrapped intermediate
cancels and the result is exact whenever the true one fits int32 (speed: `benchmarks/gemm_speed.py`
and docs/benchmarks.md). Otherwise the portable path:
int8 / int16 operands as they are, other integer dtypes narrowed to int16 (their values must fit), dot
products that LLVM vectorises to vpmaddwd; int16 x int8 measured as fast as int16 x int16 and faster
than int8 x int8 there.

Log-shift GEMM: as a few byte-operand dense GEMMs (`log_gemm`: exact windows of power-of-two operands
and floored shift planes) where that plan is small — on the VNNI tile in one pass that fills the
operands in the tile's layout and combines the accumulators per rows tile — else a shift loop per output.

PPOQ's accumulator (`outlier_sum`, `outlier_requant`): the dense GEMM over all of W's columns with an
epilogue per row that adds the outliers' products (CSR rows of the LayerNorm's outlier matrix; int32
where the row's bound allows) and, per output slice, the per-token bias, saturates and applies the
output rule (int32 x int32: the saturated sum fits).
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from adfq_sim.intsim.dyadic import requantize_one
from adfq_sim.intsim.log_gemm import (LogPlan, bit_length, check_highest_code, code_histogram, combine_row,
                                     log_block_tables, log_codes, log_shift_by_gemms, log_shift_plan)
from adfq_sim.formats import LOG_BASES
from adfq_sim.intsim.reference import (SATURATION, check_bias, check_log_args, check_log_codes, gemm_shapes,
                                      root_rules)

ROW_BLOCK = 8  # rows of A sharing each row of W while it is hot in L1
TILE_ROWS, TILE_PANELS = 4, 4  # VNNI tile: rows of A x 16-column panels of W, 16 zmm accumulators
TILE_COLS = 16 * TILE_PANELS  # (measured: 4x4, 6x4, 8x3, 4x6 within 5%; 64 columns pad DeiT's N least)
MAX_LOG_BLOCKS = 4  # more dense K-blocks run by the shift loop (measured: 2 blocks 5-8x its rate on fc2, 8 blocks slower)
_I64_MIN, _I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
_I16, _I32 = np.iinfo(np.int16), np.iinfo(np.int32)
_NO_RULE = (np.ones((1, 1), np.int64), np.ones((1, 1), np.int64), 0, 0, 0)  # m, s, zp, lo, hi of no requantization


def _target_has_vnni() -> bool:
    """Whether Numba compiles for AVX-512 VNNI: its features are NUMBA_CPU_FEATURES when set (none for
    NUMBA_CPU_NAME=generic), else the host's."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return {"+avx512f", "+avx512bw", "+avx512vnni"} <= set(features.split(","))


VNNI = _target_has_vnni()


def _codes(x: np.ndarray) -> np.ndarray:
    """A C-contiguous int8/int16 array with the values of x (a kernel operand)."""
    if x.dtype not in (np.int8, np.int16):
        if x.size and (x.min() < -(1 << 15) or x.max() >= 1 << 15):
            raise ValueError(f"GEMM operand values outside int16: [{x.min()}, {x.max()}]")
        x = x.astype(np.int16)
    return np.ascontiguousarray(x)


def _bias(bias: np.ndarray | None, n: int) -> np.ndarray:
    check_bias(bias, n)
    return np.zeros(n, np.int32) if bias is None else np.ascontiguousarray(bias, dtype=np.int32)


@numba.njit(cache=True, inline="always")
def _dot(x, y):
    # Numba widens the sum to int64; truncating it to int32 (exact under a proven bound) lets LLVM
    # narrow the whole loop back to int32 multiply-adds (vpmaddwd).
    acc = 0
    for k in range(x.shape[0]):
        acc += np.int32(x[k]) * np.int32(y[k])
    return np.int32(acc)


@numba.njit(cache=True, parallel=True)
def _dense_kernel(a, w, bias, out):  # a [G, M, K], w [1 | G, N, K], out [G, M, N]
    groups, m, _ = a.shape
    n = w.shape[1]
    blocks = (m + ROW_BLOCK - 1) // ROW_BLOCK
    for gb in prange(groups * blocks):
        g, i0 = gb // blocks, (gb % blocks) * ROW_BLOCK
        ag, wg, og = a[g], w[g if w.shape[0] > 1 else 0], out[g]
        for j in range(n):
            wj = wg[j]
            for i in range(i0, min(m, i0 + ROW_BLOCK)):
                og[i, j] = _dot(ag[i], wj) + bias[j]


@intrinsic
def _vnni_tile(typingctx, a, a_at, a_stride, w, w_at, steps, col, scale, cs_at, row, row_at, out, out_at,
               out_stride):
    """One TILE_ROWS x TILE_COLS int32 tile, every operand a C array read flat from an element offset (`_at`:
    array views per tile measured 12% slower at K = 64): TILE_ROWS uint8 rows of A, a_stride apart (K padded to
    groups of 4), times `steps` steps of a W block (int8, TILE_COLS * 4 per step: TILE_PANELS panels of
    16 columns x 4 k), plus col[c] + row[r] * scale[c]; row r stored from out_at + r * out_stride.
    TILE_ROWS x TILE_PANELS zmm accumulators start at the correction terms; each step is one vpdpbusd
    (64 MACs) per accumulator."""
    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v16 = ir.VectorType(i32, 16)

        def data(i):  # element pointer of array argument i
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        def at(i, offset):  # array argument i's element at the int64 offset
            return builder.gep(data(i), [offset])

        def int64(i):
            return context.cast(builder, args[i], signature.args[i], types.int64)

        def const(value):
            return ir.Constant(i64, value)

        def vec(ptr, index):  # 16 int32 lanes at ptr + 64 * index bytes
            return builder.load(builder.gep(builder.bitcast(ptr, v16.as_pointer()), [const(index)]), align=1)

        def splat(value):
            lane0 = builder.insert_element(ir.Constant(v16, ir.Undefined), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(lane0, ir.Constant(v16, ir.Undefined), ir.Constant(v16, None))

        name = "llvm.x86.avx512.vpdpbusd.512"
        dot = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(v16, [v16] * 3), name)
        a_at, a_stride, w_at, cs_at, row_at, out_at, out_stride = (int64(i) for i in (1, 2, 4, 8, 10, 12, 13))
        cols = [vec(at(6, cs_at), c) for c in range(TILE_PANELS)]
        scales = [vec(at(7, cs_at), c) for c in range(TILE_PANELS)]
        init = []
        for r in range(TILE_ROWS):
            row_r = splat(builder.load(at(9, builder.add(row_at, const(r)))))
            init += [builder.add(cols[c], builder.mul(row_r, scales[c])) for c in range(TILE_PANELS)]
        entry = builder.block
        loop, done = builder.append_basic_block("vnni.loop"), builder.append_basic_block("vnni.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        accs = [builder.phi(v16) for _ in init]
        w_vecs = [vec(at(3, builder.add(w_at, builder.mul(k, const(TILE_COLS * 4)))), c) for c in range(TILE_PANELS)]
        sums = []
        for r in range(TILE_ROWS):  # row r's 4 bytes of this step, broadcast to all 16 lanes
            offset = builder.add(builder.add(a_at, builder.mul(const(r), a_stride)), builder.shl(k, const(2)))
            a_vec = splat(builder.load(builder.bitcast(at(0, offset), i32.as_pointer()), align=1))
            sums += [builder.call(dot, [accs[r * TILE_PANELS + c], a_vec, w_vecs[c]]) for c in range(TILE_PANELS)]
        k_next = builder.add(k, const(1))
        k.add_incoming(const(0), entry)
        k.add_incoming(k_next, loop)
        for phi, start, total in zip(accs, init, sums):
            phi.add_incoming(start, entry)
            phi.add_incoming(total, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, int64(5)), loop, done)
        builder.position_at_end(done)
        for r in range(TILE_ROWS):
            row_out = builder.bitcast(at(11, builder.add(out_at, builder.mul(const(r), out_stride))), v16.as_pointer())
            for c in range(TILE_PANELS):
                builder.store(sums[r * TILE_PANELS + c], builder.gep(row_out, [const(c)]), align=1)
        return context.get_dummy_value()
    return types.void(a, a_at, a_stride, w, w_at, steps, col, scale, cs_at, row, row_at, out, out_at,
                      out_stride), codegen


@intrinsic
def _shuffle_bytes(typingctx, src, src_at, table, dst, dst_at):
    """dst[dst_at + j] = table[src[src_at + j]] for j < 64 by one vpshufb, for codes below 16 (a larger code
    reads table[code & 15], or 0 from 128 up: callers check the codes): the byte-table lookup LLVM leaves
    scalar."""
    def codegen(context, builder, signature, args):
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        v64, v16 = ir.VectorType(i8, 64), ir.VectorType(i8, 16)

        def at(i, offset):
            data = context.make_array(signature.args[i])(context, builder, args[i]).data
            return builder.gep(data, [context.cast(builder, offset, signature.args[i + 1], types.int64)])

        name = "llvm.x86.avx512.pshuf.b.512"
        shuffle = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(v64, [v64] * 2), name)
        data = context.make_array(signature.args[2])(context, builder, args[2]).data
        lookup = builder.load(builder.bitcast(data, v16.as_pointer()), align=1)
        lookup = builder.shuffle_vector(lookup, ir.Constant(v16, ir.Undefined),
                                        ir.Constant(ir.VectorType(i32, 64), [j % 16 for j in range(64)]))
        codes = builder.load(builder.bitcast(at(0, args[1]), v64.as_pointer()), align=1)
        builder.store(builder.call(shuffle, [lookup, codes]), builder.bitcast(at(3, args[4]), v64.as_pointer()),
                      align=1)
        return context.get_dummy_value()
    return types.void(src, src_at, table, dst, dst_at), codegen


@numba.njit(cache=True, parallel=True)
def _pack_a(a, offset, packed, sums):
    # a [G, M, K] -> packed [G, Mp, Kp] uint8 = a - offset, zero-padded; sums [G, Mp] its row sums
    groups, m, k = a.shape
    rows = packed.shape[1]
    for gi in prange(groups * rows):
        g, i = gi // rows, gi % rows
        dst, total, start = packed[g, i], 0, 0
        if i < m:
            src, start = a[g, i], k
            for c in range(k):
                v = np.int32(src[c]) - offset
                dst[c] = v
                total += v
        dst[start:] = 0
        sums[g, i] = total


@numba.njit(cache=True, parallel=True)
def _pack_w(w, packed, offsets, sums, spans):
    # w [G, N, K] -> packed [G, blocks, steps, TILE_COLS * 4] int8 = w - offsets[G, N] in `_vnni_tile`'s
    # order, zero-padded; a row's offset is 0 when it fits int8, else its min + 128 (exact when its span,
    # max - min in spans[G, N], is at most 255); sums [G, N] = row sums of w - offsets
    groups, n, k = w.shape
    blocks, steps = packed.shape[1], packed.shape[2]
    for gb in prange(groups * blocks):
        g, b = gb // blocks, gb % blocks
        dst = packed[g, b].reshape(steps, TILE_COLS, 4)
        dst[:] = 0
        for j in range(b * TILE_COLS, min(n, (b + 1) * TILE_COLS)):
            src, c = w[g, j], j - b * TILE_COLS
            lo, hi = np.int32(src[0]), np.int32(src[0])
            for kk in range(1, k):
                lo, hi = min(lo, np.int32(src[kk])), max(hi, np.int32(src[kk]))
            offset = np.int32(0) if lo >= -128 and hi <= 127 else lo + 128
            total = 0
            for kk in range(k):
                v = np.int32(src[kk]) - offset
                dst[kk >> 2, c, kk & 3] = v
                total += v
            offsets[g, j], sums[g, j], spans[g, j] = offset, total, hi - lo


@numba.njit(cache=True, inline="always")
def _requant_row(acc, m, s, zp, lo, hi, out):
    # out[c] = the codes of acc[c] by channel c's rule; a loop per case: a per-element branch on m.size (or
    # indexing the output in 3-D) kept the loop scalar, 4x slower than the GEMM tile it follows
    if m.size > 1:
        for c in range(out.size):
            out[c] = requantize_one(np.int64(acc[c]), m[c], s[c], lo, hi) + zp
    else:
        for c in range(out.size):
            out[c] = requantize_one(np.int64(acc[c]), m[0], s[0], lo, hi) + zp


@numba.njit(cache=True, parallel=True)
def _vnni_kernel(a, a_sums, w, w_offsets, col_terms, requant, m, s, zp, lo, hi, out):
    # a [G, Mp, Kp] uint8 with row sums a_sums [G, Mp], w [1 | G, blocks, steps, TILE_COLS * 4] int8 shifted
    # by w_offsets [1 | G, Np] (`_pack_a`, `_pack_w`); out [G, M, N] = a @ w^T + a_sums * w_offsets +
    # col_terms [1 | G, Np] (int32, wrapping), or its codes by requantize_one when `requant` (m, s [T, 1 | N]:
    # row r of the flattened [G * M, N] output uses rule row r % T; lo, hi already minus zp).
    groups, rows, kp = a.shape
    m_out, n = out.shape[1], out.shape[2]
    blocks, steps = w.shape[1], w.shape[2]
    padded_n = col_terms.shape[1]
    tiles = rows // TILE_ROWS
    for gt in prange(groups * tiles):
        g, i0 = gt // tiles, (gt % tiles) * TILE_ROWS
        wi = g if w.shape[0] > 1 else 0
        a_at = (g * rows + i0) * kp
        if requant:  # a TILE_ROWS x N strip, then each row's codes at once (5-8 % faster on DeiT-S than per
            strip = np.empty((TILE_ROWS, padded_n), np.int32)  # 64-column tile: fewer row views)
            for b in range(blocks):
                _vnni_tile(a, a_at, kp, w, (wi * blocks + b) * steps * TILE_COLS * 4, steps, col_terms, w_offsets,
                           wi * padded_n + b * TILE_COLS, a_sums, g * rows + i0, strip, b * TILE_COLS, padded_n)
            for r in range(min(TILE_ROWS, m_out - i0)):
                t = (g * m_out + i0 + r) % m.shape[0]
                _requant_row(strip[r], m[t], s[t], zp, lo, hi, out[g, i0 + r])
            continue
        acc = np.empty((TILE_ROWS, TILE_COLS), np.int32)
        for b in range(blocks):
            j0 = b * TILE_COLS
            j1 = min(n, j0 + TILE_COLS)
            w_at, cs_at = (wi * blocks + b) * steps * TILE_COLS * 4, wi * padded_n + j0
            if i0 + TILE_ROWS <= m_out and j1 - j0 == TILE_COLS:  # straight into out
                _vnni_tile(a, a_at, kp, w, w_at, steps, col_terms, w_offsets, cs_at, a_sums, g * rows + i0,
                           out, (g * m_out + i0) * n + j0, n)
                continue
            _vnni_tile(a, a_at, kp, w, w_at, steps, col_terms, w_offsets, cs_at, a_sums, g * rows + i0,
                       acc, 0, TILE_COLS)
            for r in range(min(TILE_ROWS, m_out - i0)):
                out[g, i0 + r, j0:j1] = acc[r, :j1 - j0]


def _dense(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None, rule: tuple | None) -> np.ndarray:
    """dense_gemm, or dense_requant's codes when rule = (m, s, zero_point, lo, hi)."""
    groups, rows, n, k = gemm_shapes(a, w)
    a3, w3, bias = a.reshape(groups, rows, k), w.reshape(-1, n, k), _bias(bias, n)
    out, w3 = np.empty((groups, rows, n), np.int32), _codes(w3)
    if not (VNNI and a.size and w.size and _vnni_gemm(a3, w3, bias, rule, out)):
        _dense_kernel(_codes(a3), w3, bias, out)
        if rule is not None:
            _requant_kernel(out, *rule)
    return out.reshape(*a.shape[:-1], n)


def _vnni_gemm(a: np.ndarray, w: np.ndarray, bias: np.ndarray, rule: tuple | None, out: np.ndarray) -> bool:
    """`_dense` by vpdpbusd into out when A's values span at most 256 integers and so do each row of W's;
    False (out untouched) otherwise."""
    packed = _vnni_a(a)
    weights = None if packed is None else _vnni_w(w)
    if weights is None:
        return False
    m, s, zp, lo, hi = rule if rule is not None else _NO_RULE
    _vnni_kernel(packed[0], packed[1], weights[0], weights[1], _col_terms(packed[2], weights, bias, a.shape[-1]),
                 rule is not None, m, s, zp, lo - zp, hi - zp, out)
    return True


def _vnni_a(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """A [G, M, K] packed for `_vnni_tile` (uint8 A - a_lo, rows and K padded), its row sums and a_lo;
    None when A's values span more than 256 integers."""
    if a.dtype in (np.int8, np.uint8):
        a_lo, a_hi = np.iinfo(a.dtype).min, np.iinfo(a.dtype).max
    else:
        a_lo, a_hi = int(a.min()), int(a.max())
        if a_lo < _I16.min or a_hi > _I16.max:
            raise ValueError(f"GEMM operand values outside int16: [{a_lo}, {a_hi}]")
    if a_hi - a_lo > 255:
        return None
    groups, rows, k = a.shape
    packed_a = np.empty((groups, -(-rows // TILE_ROWS) * TILE_ROWS, 4 * -(-k // 4)), np.uint8)
    a_sums = np.empty(packed_a.shape[:2], np.int32)
    _pack_a(np.ascontiguousarray(a), a_lo, packed_a, a_sums)
    return packed_a, a_sums, a_lo


def _vnni_w(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """W [G, N, K] packed for `_vnni_tile`, its row offsets and the row sums of W - offsets; None when a
    row's values span more than 256 integers."""
    blocks, steps = -(-w.shape[1] // TILE_COLS), -(-w.shape[2] // 4)
    packed_w = np.empty((w.shape[0], blocks, steps, TILE_COLS * 4), np.int8)
    w_offsets, w_sums, w_spans = (np.zeros((w.shape[0], blocks * TILE_COLS), np.int32) for _ in range(3))
    _pack_w(w, packed_w, w_offsets, w_sums, w_spans)
    return None if w_spans.max() > 255 else (packed_w, w_offsets, w_sums)


def _col_terms(a_lo: int, weights: tuple, bias: np.ndarray, k: int) -> np.ndarray:
    """The per-column int32 terms of `_vnni_tile`: with A = A' + a_lo and W[j] = W'[j] + w_j,
    sum_k A W[j] = A'W'[j] + a_lo * (sum_k W'[j] + K * w_j) + w_j * sum_k A' (the last term per element,
    in the kernel); int32 wraps cancel in the sum."""
    _, w_offsets, w_sums = weights
    return (np.pad(bias, (0, w_sums.shape[1] - bias.size)) + a_lo * (w_sums.astype(np.int64) + k * w_offsets)
            ).astype(np.int32)


def dense_gemm(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A @ W^T (+ bias) as int32 [(G,) M, N]; A [(G,) M, K], W [N, K] or [G, N, K]."""
    return _dense(a, w, bias, None)


def _rule_rows(m: np.ndarray, s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A rule's m, s ([1], [N] or [T, 1 | N], any integer type) as [1 | T, 1 | N] rows for the kernels."""
    m, s = (np.ascontiguousarray(x) for x in (m, s))
    if m.dtype.kind != "i" or s.dtype.kind != "i":
        raise ValueError(f"m and s must be signed integers, got {m.dtype} and {s.dtype}")
    if m.shape != s.shape or m.ndim not in (1, 2) or m.shape[-1] not in (1, n) or m.size == 0:
        raise ValueError(f"m and s must both have shape (1 | {n},) or (T, 1 | {n}), got {m.shape} and {s.shape}")
    return tuple(x.reshape(x.shape[0] if x.ndim == 2 else 1, -1) for x in (m, s))


def dense_requant(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None, m: np.ndarray, s: np.ndarray,
                  zero_point: int, lo: int, hi: int) -> np.ndarray:
    """dense_gemm's accumulator (which must fit int32, as there) straight to int32 codes [(G,) M, N]:
    `dyadic.requantize(acc, m, s, lo - zero_point, hi - zero_point) + zero_point`, m and s int64 [1] (per
    tensor), [N] (per output channel), or [T, 1 | N] (per token: row r of the output flattened to
    [rows, N] uses rule row r % T, as `program.Requant`). The rule runs on each GEMM tile while it is in
    cache, saving a pass over the int32 accumulator."""
    m, s = _rule_rows(m, s, w.shape[-2])
    return _dense(a, w, bias, (m, s, int(zero_point), int(lo), int(hi)))


@numba.njit(cache=True, parallel=True)
def _requant_kernel(acc, m, s, zp, lo, hi):
    # acc [G, M, N] int32 -> its codes, in place (the portable path of dense_requant; m, s as `_vnni_kernel`)
    groups, rows, _ = acc.shape
    for gi in prange(groups * rows):
        row, t = acc[gi // rows, gi % rows], gi % m.shape[0]
        _requant_row(row, m[t], s[t], zp, lo - zp, hi - zp, row)


@numba.njit(cache=True, inline="always")
def _shift_sum(row, shift, mask):
    # The sum of (B << E) >> shift over the lanes in mask (-1 or 0). `& 31` (a no-op: shifts are
    # capped at 31) and the int32 casts let LLVM use 16-lane int32 shifts instead of Numba's int64 ones.
    acc = 0
    for c in range(row.shape[0]):
        acc += np.int32(row[c] >> (shift[c] & 31)) & mask[c]
    return np.int32(acc)


@numba.njit(cache=True, inline="always")
def _shift_sums(row, shift, even, odd):
    # `_shift_sum` over the even and the odd lanes in one pass (faster than two).
    acc_even = 0
    acc_odd = 0
    for c in range(row.shape[0]):
        term = np.int32(row[c] >> (shift[c] & 31))
        acc_even += term & even[c]
        acc_odd += term & odd[c]
    return np.int32(acc_even), np.int32(acc_odd)


@numba.njit(cache=True, parallel=True)
def _log_shift_kernel(p, scaled, zero_code, shift_of, lanes_of, rule_m, rule_s, bias, out):
    # p [G, M, K] uint8 codes, scaled [1 | G, N, K] int32 = B << E, out [G, M, N]; code q = R * j + r adds
    # (B << E) >> j to accumulator r (R = lanes_of.shape[0]), weighted by the dyadic rule (rule_m[r], rule_s[r]).
    # Per code, from tables: shift_of[q] = min(j, 31), lanes_of[r, q] = -1 if q is live with remainder r, else 0.
    groups, m, k = p.shape
    n = scaled.shape[1]
    roots = lanes_of.shape[0]
    for gi in prange(groups * m):
        g, i = gi // m, gi % m
        sg, og, row = scaled[g if scaled.shape[0] > 1 else 0], out[g], p[g, i]
        shift = np.empty(k, np.int32)  # per column of this row: the right shift and the lane masks
        lanes = np.empty((roots, k), np.int32)
        if roots <= 2:  # bases 2 and sqrt2 by arithmetic (the tables' gathers cost 20 % at K = 197)
            for c in range(k):
                q = np.int32(row[c])
                live = np.int32(-1) if q != zero_code else np.int32(0)
                shift[c] = min(q >> (roots - 1), 31)
                if roots == 1:
                    lanes[0, c] = live
                else:
                    lanes[0, c] = live & ((q & 1) - 1)  # even codes
                    lanes[1, c] = live & -(q & 1)
        else:
            for c in range(k):
                shift[c] = shift_of[row[c]]
            for r in range(roots):
                for c in range(k):
                    lanes[r, c] = lanes_of[r, row[c]]
        first, second = lanes[0], lanes[min(1, roots - 1)]
        for j in range(n):
            if roots == 1:  # base 2: one accumulator, twice as fast
                og[i, j] = np.int64(_shift_sum(sg[j], shift, first)) + bias[j]
            elif roots == 2:  # base sqrt2: both accumulators in one pass
                acc_even, acc_odd = _shift_sums(sg[j], shift, first, second)
                og[i, j] = (np.int64(acc_even) + bias[j]
                            + requantize_one(np.int64(acc_odd), rule_m[1], rule_s[1], _I64_MIN, _I64_MAX))
            else:
                total = np.int64(_shift_sum(sg[j], shift, first)) + bias[j]
                for r in range(1, roots):
                    total += requantize_one(np.int64(_shift_sum(sg[j], shift, lanes[r])), rule_m[r], rule_s[r],
                                            _I64_MIN, _I64_MAX)
                og[i, j] = total


@numba.njit(cache=True, parallel=True)
def _fill_packed(p, tables, blocks, a_at, kps, a, sums, highest, shuffle):
    # p [G, M, K] codes -> each plan GEMM i's operand in `_vnni_tile`'s layout, [G, Mp, kps[i]] from a_at[i]
    # of the flat a: K-block t of a row holds tables[first table of i + t][code], zero-padded, rows past M
    # zero; sums [plan GEMMs, G, Mp] the row sums; highest[g * M + row] = the row's largest code. shuffle:
    # every valid code is below 16, 64 codes looked up per vpshufb (a larger code is caught by highest)
    groups, m, k = p.shape
    rows = sums.shape[2]
    for gi in prange(groups * rows):
        g, i = gi // rows, gi % rows
        if i < m:
            row = p[g, i]
            top = np.uint8(0)
            for c in range(k):
                top = max(top, row[c])
            highest[g * m + i] = top
        table = 0
        for index in range(blocks.size):
            dst = a[a_at[index] + gi * kps[index]:a_at[index] + (gi + 1) * kps[index]]
            total, filled = 0, 0
            if i < m:
                for t in range(blocks[index]):
                    lookup, part = tables[table + t], dst[t * k:(t + 1) * k]
                    done = 0
                    if shuffle:
                        while done + 64 <= k:
                            _shuffle_bytes(row, done, lookup, part, done)
                            done += 64
                    for c in range(done, k):
                        part[c] = lookup[row[c]]
                    for c in range(k):
                        total += part[c]
                filled = blocks[index] * k
            dst[filled:] = 0
            sums[index, g, i] = total
            table += blocks[index]


@numba.njit(cache=True, parallel=True)
def _log_vnni_kernel(a, a_at, kps, a_sums, w, w_at, steps, w_offsets, col_terms, lane_of, scale_of, roots, rule_m,
                     rule_s, bias, out):
    # The log-shift GEMM from its plan's byte operands (`_fill_packed`) in one pass per TILE_ROWS rows: each
    # plan GEMM's int32 strip [TILE_ROWS, Np] by `_vnni_tile` (W of GEMM i at w_at[i], its offsets and column
    # terms [plans, 1 | G, Np]), then per row `log_gemm.combine_row` into out [G, M, N]
    groups, m_out, n = out.shape
    plans, rows = a_at.size, a_sums.shape[2]
    w_groups, padded_n = w_offsets.shape[1], w_offsets.shape[2]
    blocks, tiles = padded_n // TILE_COLS, rows // TILE_ROWS
    for gt in prange(groups * tiles):
        g, i0 = gt // tiles, (gt % tiles) * TILE_ROWS
        wg = g if w_groups > 1 else 0
        strips = np.empty((TILE_ROWS, plans, padded_n), np.int32)  # row r: every plan GEMM's result
        lanes = np.empty((roots, n), np.int64)
        for index in range(plans):
            for b in range(blocks):
                _vnni_tile(a, a_at[index] + (g * rows + i0) * kps[index], kps[index], w,
                           w_at[index] + (wg * blocks + b) * steps[index] * TILE_COLS * 4, steps[index], col_terms,
                           w_offsets, (index * w_groups + wg) * padded_n + b * TILE_COLS, a_sums,
                           (index * groups + g) * rows + i0, strips, index * padded_n + b * TILE_COLS,
                           plans * padded_n)
        for r in range(min(TILE_ROWS, m_out - i0)):
            combine_row(strips[r], lane_of, scale_of, rule_m, rule_s, bias, lanes, out[g, i0 + r])


def _log_shift_vnni(p: np.ndarray, b: np.ndarray, plan: LogPlan, roots: int, bias: np.ndarray | None
                    ) -> np.ndarray | None:
    """`log_gemm.log_shift_by_gemms` on the VNNI tile without its intermediates: the operands filled in the
    tile's layout, every plan GEMM and the combination of the accumulators in one pass per rows tile;
    None when a W of the plan has a row spanning more than 256 integers."""
    groups, m, k = p.shape
    n = b.shape[1]
    packed_w: dict[tuple[int, ...], tuple] = {}
    for gemm in plan.gemms:
        if gemm.shifts not in packed_w:
            w = b if gemm.shifts == (0,) else np.concatenate([b >> s for s in gemm.shifts], axis=-1)
            packed_w[gemm.shifts] = _vnni_w(w)
            if packed_w[gemm.shifts] is None:
                return None
    weights = [packed_w[gemm.shifts] for gemm in plan.gemms]
    blocks = np.array([len(g.shifts) for g in plan.gemms], np.int64)
    kps = 4 * -(-blocks * k // 4)
    rows = -(-m // TILE_ROWS) * TILE_ROWS
    a_at = np.concatenate([[0], np.cumsum(groups * rows * kps)])
    a, sums = np.empty(int(a_at[-1]), np.uint8), np.empty((len(plan.gemms), groups, rows), np.int32)
    highest = np.zeros(groups * m, np.uint8)
    _fill_packed(p, log_block_tables(plan), blocks, a_at[:-1].copy(), kps, a, sums, highest, plan.zero_code < 16)
    check_highest_code(highest, plan)
    starts = dict(zip(packed_w, np.cumsum([0] + [wt[0].size for wt in packed_w.values()])))  # each W packed once
    w_at = np.array([starts[gemm.shifts] for gemm in plan.gemms], np.int64)
    w_offsets = np.stack([wt[1] for wt in weights])
    out = np.empty((groups, m, n), np.int32)
    _log_vnni_kernel(a, a_at[:-1].copy(), kps, sums, np.concatenate([wt[0].ravel() for wt in packed_w.values()]),
                     w_at, np.array([wt[0].shape[2] for wt in weights], np.int64), w_offsets,
                     np.zeros_like(w_offsets), np.array([g.lane for g in plan.gemms], np.int64),
                     np.array([g.scale for g in plan.gemms], np.int64), roots, *root_rules(roots),
                     np.zeros(n, np.int64) if bias is None else np.asarray(bias, np.int64), out)
    return out


@lru_cache(maxsize=None)
def _code_tables(roots: int, zero_code: int) -> tuple[np.ndarray, np.ndarray]:
    """(shift_of [256], lanes_of [R, 256]) of `_log_shift_kernel` for uint8 codes."""
    q = np.arange(256)
    live = q != zero_code
    lanes = np.stack([np.where(live & (q % roots == r), -1, 0) for r in range(roots)]).astype(np.int32)
    return np.minimum(q // roots, 31).astype(np.int32), lanes


def log_shift_gemm(p: np.ndarray, b: np.ndarray, e: int, base: str, zero_code: int,
                   bias: np.ndarray | None = None) -> np.ndarray:
    """P (integer log codes) times B^T by shifts, as int32 [(G,) M, N]; see `reference.log_shift_gemm`.
    With VNNI and a plan of at most MAX_LOG_BLOCKS K-blocks (for every code up to zero_code, or failing
    that for the codes P holds, after a histogram pass), as the dense GEMMs of `log_gemm`; else by the
    shift loop."""
    groups, m, n, k = gemm_shapes(p, b)
    check_log_args(p, e, base, zero_code)
    check_bias(bias, n)
    roots = LOG_BASES[base]
    p3, b3 = log_codes(p).reshape(groups, m, k), _codes(b).reshape(-1, n, k)
    if VNNI and p.size and b.size:  # a plan for every code when it is small (no pass to look), else for those in P
        plan = log_shift_plan(np.arange(256) <= zero_code, e, roots, zero_code, bit_length(b3))
        if plan.blocks > MAX_LOG_BLOCKS:
            plan = log_shift_plan(code_histogram(p3), e, roots, zero_code, bit_length(b3))
        if plan.blocks <= MAX_LOG_BLOCKS:
            out = _log_shift_vnni(p3, b3, plan, roots, bias)
            if out is None:
                out = log_shift_by_gemms(p3, b3, plan, roots, bias, dense_gemm)
            return out.reshape(*p.shape[:-1], n)
    if p.size:
        check_log_codes(0, int(p3.max()), zero_code)
    out = np.empty((groups, m, n), np.int32)
    _log_shift_kernel(p3, b3.astype(np.int32) << e, zero_code, *_code_tables(roots, zero_code), *root_rules(roots),
                      _bias(bias, n), out)
    return out.reshape(*p.shape[:-1], n)


@numba.njit(cache=True, parallel=True)
def _row_counts(x, counts):
    for i in prange(x.shape[0]):
        total = 0
        for j in range(x.shape[1]):
            total += x[i, j] != 0
        counts[i] = total


@numba.njit(cache=True, parallel=True)
def _row_entries(x, starts, cols, codes):
    for i in prange(x.shape[0]):
        at = starts[i]
        for j in range(x.shape[1]):
            if x[i, j] != 0:
                cols[at], codes[at] = j, x[i, j]
                at += 1


def outlier_rows(outliers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero entries of outliers [M, K] (the LayerNorm's int16 outlier codes, 0 elsewhere) as CSR:
    row pointers starts [M + 1] (row i's entries are [starts[i], starts[i + 1])), int32 columns, int16 codes,
    in row-major order; two parallel passes."""
    x = np.ascontiguousarray(outliers)
    counts = np.empty(x.shape[0], np.int64)
    _row_counts(x, counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    cols, codes = np.empty(starts[-1], np.int32), np.empty(starts[-1], x.dtype)
    _row_entries(x, starts, cols, codes)
    if codes.size and (codes.min() < _I16.min or codes.max() > _I16.max):
        raise ValueError(f"outlier codes outside int16: [{codes.min()}, {codes.max()}]")
    return starts, cols, codes.astype(np.int16)


@numba.njit(cache=True, inline="always")
def _outlier_products(first, last, cols, codes, w_t, extra):
    # extra [N] = the products of a row's outliers [first, last) with their W^T rows (contiguous), two per pass
    # (int32 when `_ppoq` proved the row's sum fits: 16 lanes per vector and a pmaddwd for each pair)
    extra[:] = 0
    o = first
    while o + 1 < last:
        c0, c1, w0, w1 = codes[o], codes[o + 1], w_t[cols[o]], w_t[cols[o + 1]]
        for c in range(extra.size):
            extra[c] += np.int32(c0) * np.int32(w0[c]) + np.int32(c1) * np.int32(w1[c])
        o += 2
    if o < last:
        c0, w0 = codes[o], w_t[cols[o]]
        for c in range(extra.size):
            extra[c] += np.int32(c0) * np.int32(w0[c])


@numba.njit(cache=True, inline="always")
def _ppoq_codes(acc, extra, bias, shift, m, s, zp, lo, hi, out):
    # out[c] = the codes of the saturated sum (acc[c] << shift) + bias[c] + extra[c], in one pass; the saturated
    # value fits int32, so the rule's product is int32 x int32 (m < 2**31: a vpmuldq). Every index is c alone:
    # an offset index (j0 + c) makes Numba check for a negative index per element (measured 1.7x slower).
    if m.size > 1:
        for c in range(out.size):
            v = np.int32(min(max((np.int64(acc[c]) << shift) + bias[c] + extra[c], -SATURATION), SATURATION))
            out[c] = requantize_one(np.int64(v), np.int64(m[c]), np.int64(s[c]), lo, hi) + zp
    else:
        for c in range(out.size):
            v = np.int32(min(max((np.int64(acc[c]) << shift) + bias[c] + extra[c], -SATURATION), SATURATION))
            out[c] = requantize_one(np.int64(v), np.int64(m[0]), np.int64(s[0]), lo, hi) + zp


@numba.njit(cache=True, inline="always")
def _ppoq_epilogue(acc, i, shift, starts, cols, codes, w_t, bias, saturation, extra, col0s, requant, ms, ss, zps,
                   los, his, outs):
    # row i of every slice k (outs[k]'s columns from col0s[k]) from the row's dense int32 part acc [N]: the
    # outliers' products once for the whole row, then per slice the sum (acc << shift) + bias + products,
    # clamped to +-saturation, stored as it is or as codes by the slice's rule (ms[k], ss[k] [T, 1 | n]: rule
    # row i % T; lo, hi minus zp)
    _outlier_products(starts[i], starts[i + 1], cols, codes, w_t, extra)
    b = bias[i % bias.shape[0]]
    for k in range(len(outs)):
        out = outs[k][i]
        j0, j1 = col0s[k], col0s[k] + out.size
        if requant:
            t = i % ms[k].shape[0]
            _ppoq_codes(acc[j0:j1], extra[j0:j1], b[j0:j1], shift, ms[k][t], ss[k][t], zps[k], los[k], his[k], out)
        else:
            _ppoq_sums(acc[j0:j1], extra[j0:j1], b[j0:j1], shift, saturation, out)


@numba.njit(cache=True, inline="always")
def _ppoq_sums(acc, extra, bias, shift, saturation, out):
    for c in range(out.size):
        out[c] = min(max((np.int64(acc[c]) << shift) + bias[c] + extra[c], -saturation), saturation)


@numba.njit(cache=True, parallel=True)
def _vnni_ppoq_kernel(a, a_sums, w, w_offsets, col_terms, order, shift, starts, cols, codes, w_t, bias, saturation,
                      extra_type, col0s, requant, ms, ss, zps, los, his, outs):
    # `_vnni_kernel` (one group) with PPOQ's epilogue (`_ppoq_epilogue`) on each TILE_ROWS x N strip while it
    # is in cache; row tiles in the given order
    kp = a.shape[2]
    m_out, n = starts.size - 1, w_t.shape[1]
    blocks, steps = w.shape[1], w.shape[2]
    for index in prange(order.size):
        i0 = order[index] * TILE_ROWS
        strip, extra = np.empty((TILE_ROWS, blocks * TILE_COLS), np.int32), np.empty(n, extra_type.dtype)
        for b in range(blocks):
            _vnni_tile(a, i0 * kp, kp, w, b * steps * TILE_COLS * 4, steps, col_terms, w_offsets, b * TILE_COLS,
                       a_sums, i0, strip, b * TILE_COLS, blocks * TILE_COLS)
        for r in range(min(TILE_ROWS, m_out - i0)):
            _ppoq_epilogue(strip[r], i0 + r, shift, starts, cols, codes, w_t, bias, saturation, extra, col0s,
                           requant, ms, ss, zps, los, his, outs)


@numba.njit(cache=True, parallel=True)
def _ppoq_kernel(dense, shift, starts, cols, codes, w_t, bias, saturation, extra_type, col0s, requant, ms, ss, zps,
                 los, his, outs):
    # the portable path: `_ppoq_epilogue` on each row of the dense int32 product
    for i in prange(dense.shape[0]):
        _ppoq_epilogue(dense[i], i, shift, starts, cols, codes, w_t, bias, saturation,
                       np.empty(w_t.shape[1], extra_type.dtype), col0s, requant, ms, ss, zps, los, his, outs)


def pack_weights(w: np.ndarray) -> tuple | None:
    """W [N, K] in the VNNI tile's layout for `outlier_sum` / `outlier_requant` (a caller running a layer
    often packs it once); None without VNNI or when a row of W spans more than 256 integers."""
    return _vnni_w(_codes(w)[None]) if VNNI and w.size else None


def _rule32(m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dyadic rule's m as int32 and s as int8 (m < 2**31 and s <= MAX_SHIFT by construction; checked unless
    the dtypes already say so)."""
    if m.dtype != np.int32 and m.size and (m.min() < 0 or m.max() > _I32.max):
        raise ValueError(f"rule multipliers outside [0, 2**31): [{m.min()}, {m.max()}]")
    if s.dtype != np.int8 and s.size and (s.min() < 0 or s.max() > 63):
        raise ValueError(f"rule shifts outside [0, 63]: [{s.min()}, {s.max()}]")
    return np.ascontiguousarray(m, np.int32), np.ascontiguousarray(s, np.int8)


def _ppoq(a: np.ndarray, w: np.ndarray, shift: int, outliers: np.ndarray, bias: np.ndarray, saturated: bool,
          slices: list[tuple[int, int, tuple | None]], w_t: np.ndarray | None, packed: tuple | None
          ) -> list[np.ndarray]:
    """PPOQ's sum (`outlier_sum`) over columns [start, stop) of W for each slice, or its codes by the slice's
    rule (m [T, 1 | N], s, zero_point, lo, hi; every slice has one or none does), all slices in one pass over
    A; the outliers' CSR rows and W^T made once."""
    if (a.ndim != 2 or w.ndim != 2 or outliers.shape != a.shape or a.shape[1] != w.shape[1] or bias.ndim != 2
            or bias.shape[1] != w.shape[0] or bias.dtype.kind != "i"):
        raise ValueError(f"need A [M, K], outliers [M, K], W [N, K], integer bias [T, N]; got {a.shape}, "
                         f"{outliers.shape}, {w.shape}, {bias.shape} {bias.dtype}")
    starts, cols, codes = outlier_rows(outliers)
    w = _codes(w)
    if w_t is not None and w_t.shape != w.shape[::-1]:
        raise ValueError(f"W^T of shape {w_t.shape} for W of shape {w.shape}")
    w_t, bias = np.ascontiguousarray(w.T if w_t is None else w_t), np.ascontiguousarray(bias)
    # a row's outlier products in int32 when the largest row sum of |codes| times W's largest magnitude fits
    row_abs = np.concatenate([[0], np.cumsum(np.abs(codes, dtype=np.int64))])
    largest = int((row_abs[starts[1:]] - row_abs[starts[:-1]]).max(initial=0)) * (1 << (8 * w_t.itemsize - 1))
    extra_type = np.zeros(1, np.int32 if largest <= _I32.max else np.int64)
    requant = slices[0][2] is not None
    rules = [_rule32(*rule[:2]) if requant else _NO_RULE[:2] for _, _, rule in slices]
    zps, los, his = (np.array([rule[i] if requant else _NO_RULE[i] for _, _, rule in slices], np.int64) for i in (2, 3, 4))
    los, his = los - zps, his - zps
    outs = tuple(np.empty((a.shape[0], stop - start), np.int32 if saturated or requant else np.int64)
                 for start, stop, _ in slices)
    args = (starts, cols, codes, w_t, bias, SATURATION if saturated else _I64_MAX, extra_type,
            np.array([start for start, _, _ in slices], np.int64), requant, tuple(m for m, _ in rules),
            tuple(s for _, s in rules), zps, los, his, outs)
    packed_a = _vnni_a(a[None]) if VNNI and a.size and w.size else None
    weights = None if packed_a is None else packed if packed is not None else _vnni_w(w[None])
    if weights is not None:
        # row tiles in token order: the per-token constants of a token (bias, rule: KBs per row) are read once
        # for all images instead of once per image
        tokens = max([bias.shape[0]] + [m.shape[0] for m, _ in rules])
        order = np.argsort(np.arange(-(-a.shape[0] // TILE_ROWS)) * TILE_ROWS % tokens, kind="stable")
        _vnni_ppoq_kernel(packed_a[0], packed_a[1], weights[0], weights[1],
                          _col_terms(packed_a[2], weights, np.zeros(w.shape[0], np.int32), a.shape[1]), order, shift,
                          *args)
    else:
        dense = np.empty((1, a.shape[0], w.shape[0]), np.int32)
        _dense_kernel(_codes(a)[None], w[None], np.zeros(w.shape[0], np.int32), dense)
        _ppoq_kernel(dense[0], shift, *args)
    return list(outs)


def outlier_sum(a: np.ndarray, w: np.ndarray, shift: int, outliers: np.ndarray, bias: np.ndarray,
                saturated: bool, w_t: np.ndarray | None = None, packed: tuple | None = None) -> np.ndarray:
    """PPOQ's accumulator as `execute_reference.outlier_sum`, fused: (A @ W^T << shift) + the products of the
    outliers (CSR rows of `outlier_rows`) + bias [T, N], saturated, in the GEMM tile's epilogue; int32 when
    saturated (the values fit), else int64. w_t: W^T contiguous and packed: `pack_weights(w)`, when the
    caller keeps them per layer."""
    return _ppoq(a, w, shift, outliers, bias, saturated, [(0, w.shape[0], None)], w_t, packed)[0]


def outlier_requant(a: np.ndarray, w: np.ndarray, shift: int, outliers: np.ndarray, bias: np.ndarray,
                    saturated: bool, rules: list[tuple[int, int, np.ndarray, np.ndarray, int, int, int]],
                    w_t: np.ndarray | None = None, packed: tuple | None = None) -> list[np.ndarray]:
    """`outlier_sum`'s saturated accumulator (an int32, as the rule's product needs: export saturates every
    PPOQ sum) straight to int32 codes, in the same epilogue, one array per rule (start, stop, m, s,
    zero_point, lo, hi): columns [start, stop) by the rule of `dense_requant` (m, s [1], [N] or [T, 1 | N]
    over the slice's N columns)."""
    if not saturated:
        raise ValueError("PPOQ's codes need its saturated (int32) sum")
    slices = []
    for start, stop, m, s, zero_point, lo, hi in rules:
        if not 0 <= start < stop <= w.shape[0]:
            raise ValueError(f"output columns [{start}, {stop}) outside the {w.shape[0]} of W")
        slices.append((start, stop, (*_rule_rows(m, s, stop - start), int(zero_point), int(lo), int(hi))))
    return _ppoq(a, w, shift, outliers, bias, saturated, slices, w_t, packed)
