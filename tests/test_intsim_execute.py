"""The Numba simulator equals the int64 reference executor on the demo, code for code.

Both run one op sequence (`execute_reference.run_program`) with different kernels, so any mismatch is a
kernel or a storage (dtype) difference. Calibration uses 32 images: the percentile observer is slow on
the full calibration split, and the residual scales only need realistic ranges. Measured: zero
mismatched codes in all 43 tensors for each of the four (method, bits) cases below.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import demo_calibration

from adfq_sim.intsim.dyadic import dyadic_array
from adfq_sim.intsim.execute import SIMULATOR_OPS, run_simulator
from adfq_sim.intsim.execute_reference import REFERENCE_OPS, run_reference
from adfq_sim.intsim.export import export
from adfq_sim.formats import OutlierOperand
from adfq_sim.intsim.ops import Gemm, Requant
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.methods import build_recipe
from adfq_sim.quant.options import QuantConfig

CALIB_IMAGES, IMAGES = 32, 64


@pytest.fixture(scope="module")
def demo():
    return demo_calibration(CALIB_IMAGES, IMAGES)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
@pytest.mark.parametrize("bits", [8, 4])
def test_simulator_codes_and_logits_equal_reference(demo, method, bits):
    model, batches, images = demo
    program = export(quantize_model(model, build_recipe(method, QuantConfig()), bits, bits, batches), batches)
    ref_logits, ref_codes = run_reference(program, images)
    sim_logits, sim_codes = run_simulator(program, images)

    assert list(sim_codes) == list(ref_codes)
    mismatches = {name: int((sim_codes[name] != codes).sum()) for name, codes in ref_codes.items()}
    for name, codes in ref_codes.items():
        assert sim_codes[name].shape == codes.shape, name
    print(f"{method} W{bits}A{bits}: " + ", ".join(f"{n}={c}" for n, c in mismatches.items()))
    assert not any(mismatches.values()), {n: c for n, c in mismatches.items() if c}
    np.testing.assert_array_equal(sim_logits, ref_logits)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 40), n=st.integers(1, 70), k=st.integers(1, 50),
       tokens=st.integers(1, 7), per=st.sampled_from(["tensor", "channel", "token"]), offset=st.booleans())
def test_simulator_ops_equal_reference_ops(seed, rows, n, k, tokens, per, offset):
    """The simulator's own kernels (requantization with per-token x channel rules and offsets, residual
    add, per-row zero-points, PPOQ's sum and its codes) equal the reference ops on random shapes."""
    rng = np.random.default_rng(seed)
    shape = {"tensor": (1,), "channel": (n,), "token": (tokens, n)}[per]
    m, s = dyadic_array(np.exp(rng.uniform(-8, 2, shape)))
    offsets = rng.integers(-(1 << 40), 1 << 40, (n,) if offset and per != "token" else (1,))
    r = Requant(m, s, int(rng.integers(0, 16)), -100, 300, offsets)
    acc = rng.integers(-(1 << 31) + 1, 1 << 31, (rows, n)).astype(np.int32)
    np.testing.assert_array_equal(SIMULATOR_OPS.requant(acc, r), REFERENCE_OPS.requant(acc, r))
    if per != "token":
        b = rng.integers(-(1 << 19), 1 << 19, (rows, n)).astype(np.int32)
        np.testing.assert_array_equal(SIMULATOR_OPS.add(acc, r, b, r), REFERENCE_OPS.add(acc, r, b, r))
    codes = rng.integers(0, 256, (rows, k)).astype(np.int32)
    zp = rng.integers(0, 256, (rows, 1))
    np.testing.assert_array_equal(SIMULATOR_OPS.operand(codes, zp), REFERENCE_OPS.operand(codes, zp))
    outliers = np.where(rng.random((rows, k)) < 0.1, rng.integers(-(1 << 15), 1 << 15, (rows, k)), 0)
    w = rng.integers(-255, 256, (n, k)).astype(np.int16)
    a = np.where(outliers != 0, 0, rng.integers(-128, 128, (rows, k))).astype(np.int16)
    bias = rng.integers(-(1 << 40), 1 << 40, (tokens, n))
    shift = int(rng.integers(0, 8))
    for saturated in (True, False):
        g = Gemm(w.astype(np.int32), bias, OutlierOperand(np.zeros(1, np.int64), shift), 0, saturated)
        np.testing.assert_array_equal(SIMULATOR_OPS.outlier_sum(a, g, outliers), REFERENCE_OPS.outlier_sum(a, g, outliers))
    cut = n // 2 or n  # columns [0, cut) by the drawn rule, the rest (q, k, v alike) by another
    first = (m, s) if m.shape[-1] == 1 else (m[..., :cut], s[..., :cut])
    no_offset = np.zeros(1, np.int64)  # the fused rule has none
    rules = [(0, cut, Requant(*first, r.zero_point, r.lo, r.hi, no_offset))] + (
        [(cut, n, Requant(m[..., :1], s[..., :1], 0, -9, 9, no_offset))] if cut < n else [])
    for got, want in zip(*(ops.outlier_requant(a, g, outliers, rules) for ops in (SIMULATOR_OPS, REFERENCE_OPS)),
                         strict=True):
        np.testing.assert_array_equal(got, want)
