"""The format table: each format declared once and complete, and a new log base is one table entry.

The log-shift products of the three executors take any base 2**(1/R); the end-to-end test adds base
2**(1/4) to the table (as a new `LOG_BASES` line would) and nothing else, then quantizes the demo with it
on the softmax output and the fc2 input, exports, runs the three executors and prices the program.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adfq_sim import formats
from adfq_sim.distributions import _jsonable
from adfq_sim.intsim import faithful, kernels, reference
from adfq_sim.intsim.execute import run_simulator
from adfq_sim.intsim.execute_reference import run_reference
from adfq_sim.intsim.export import export
from adfq_sim.intsim.faithful import run_faithful
from adfq_sim.intsim.program import describe
from adfq_sim.intsim.verify import total_mismatches, verify
from adfq_sim.quant.calibrate import quantize_model
from adfq_sim.quant.recipes import spec, uniform_everywhere
from conftest import demo_calibration
from hw_models.workload import workload


def test_every_format_is_declared_once_with_what_its_readers_need() -> None:
    operands = {"uniform": formats.UniformOperand(np.zeros(1, np.int64)),
                "ppoq": formats.OutlierOperand(np.zeros(3, np.int64), 2),
                "twin": formats.TwinOperand("softmax", 8, 3),
                **{f"log{b}": formats.LogOperand(b, 10, 15) for b in formats.LOG_BASES}}
    for name, fmt in formats.FORMATS.items():
        assert fmt.name == name and fmt.rule
        if name in operands:  # a GEMM operand: its class reports this format, a kind prices it, levels plot it
            assert isinstance(operands[name], fmt.operand) and operands[name].format == name
            assert fmt.kind in ("dense", "shift", "twin") and fmt.levels is not None
            assert operands[name].describe()
        else:
            assert fmt.kind is None and fmt.operand is None
    assert set(operands) <= set(formats.FORMATS)
    assert {formats.RESIDUAL.name, formats.OUTLIERS.name, formats.ACCUMULATOR.name} == set(formats.FORMATS) - set(operands)


@pytest.fixture
def fourth_root_base(monkeypatch):
    """Base 2**(1/4) registered the way a new LOG_BASES line registers it."""
    monkeypatch.setitem(formats.LOG_BASES, "4rt2", 4)
    monkeypatch.setitem(formats.FORMATS, "log4rt2", formats.log_format("4rt2", 4))
    return "4rt2"


@settings(max_examples=40, deadline=None)
@given(roots=st.integers(1, 5), m=st.integers(1, 9), n=st.integers(1, 9), k=st.integers(1, 40),
       e=st.integers(0, 16), bits=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
def test_log_products_take_any_root_of_two(roots, m, n, k, e, bits, seed) -> None:
    """reference == Numba kernel == integer-faithful torch product, for base 2**(1/R), R = 1..5."""
    base = f"root{roots}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(formats.LOG_BASES, base, roots)
        rng = np.random.default_rng(seed)
        zero_code = (1 << bits) - 1
        p = rng.integers(0, zero_code + 1, (m, k)).astype(np.uint8)
        b = rng.integers(-128, 128, (n, k)).astype(np.int16)
        want = reference.log_shift_gemm(p, b, e, base, zero_code)
        np.testing.assert_array_equal(kernels.log_shift_gemm(p, b, e, base, zero_code), want)
        got = faithful._log_product(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(b.astype(np.int64)),
                                    formats.LogOperand(base, e, zero_code))
        np.testing.assert_array_equal(got.numpy(), want)


def test_fourth_root_semantics_by_hand(fourth_root_base) -> None:
    """q = 4j + r: b >> j into accumulator r, accumulator r times 2**(-r/4) rounded half up."""
    b = np.array([[64, 64, 64, 100]], np.int16)
    p = np.array([[0, 5, 10, 15]], np.uint8)  # zero code 15: acc0 = 64; acc1 = 64 >> 1; acc2 = 64 >> 2
    expected = 64 + int(np.floor(32 * 2 ** -0.25 + 0.5)) + int(np.floor(16 * 2 ** -0.5 + 0.5))
    for impl in (reference, kernels):
        assert impl.log_shift_gemm(p, b, 0, fourth_root_base, 15)[0, 0] == expected == 64 + 27 + 11


def test_a_new_log_base_is_one_table_entry(fourth_root_base) -> None:
    """Quantizer, export, the three executors, the listing, the workload and the plots' levels all take
    the new base from the table."""
    model, calib, images = demo_calibration(32, 8)
    recipe = uniform_everywhere("log4rt2", spec("uniform", observer="minmax"),
                                probs=spec("log", base=fourth_root_base), fc2_in=spec("slq", base=fourth_root_base))
    qmodel = quantize_model(model, recipe, 4, 4, calib)
    program = export(qmodel, calib)
    assert program.tensor_formats()["blocks.0.probs"] == program.tensor_formats()["blocks.0.fc2_in"] == "log4rt2"
    _, ref_codes = run_reference(program, images)
    sim_logits, sim_codes = run_simulator(program, images)
    _, faithful_codes = run_faithful(program, images)
    assert total_mismatches(verify(sim_codes, ref_codes) + verify(sim_codes, faithful_codes)) == 0
    with torch.no_grad():
        fake = qmodel(images).argmax(1).numpy()
    assert (sim_logits.argmax(1) == fake).mean() >= 0.75
    kinds = {g.name: g.kind for g in workload(program).gemms}
    assert kinds["blocks.0.attn.pv"] == kinds["blocks.0.mlp.fc2"] == "shift"
    assert "log4rt2 codes" in describe(program)
    form = _jsonable(qmodel.model.get_submodule("blocks.0.mlp.fc2.act_q").integer_form())
    levels = formats.levels(form)[0] - form["shift"]  # the zero code, then 15 powers of 2**(1/4) apart
    assert len(levels) == 16 and levels[0] == 0 and np.all(np.diff(levels) > 0)
    np.testing.assert_allclose(levels[2:] / levels[1:-1], 2 ** 0.25, rtol=1e-6)
