"""The area model: Aladdin's 40 nm units reproduced by hand, published bitcells at their nodes, and the
directions an architect relies on (more PEs, lanes, SRAM or a wider MAC cost area; a smaller node less)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hw_models.area import AREA_COMPONENTS, BITCELL_UM2, area_mm2, bitcell_um2, pe_um2
from hw_models.spec import MacUnit, load_spec, preset_names


def test_edge_npu_pe_by_hand():
    # Aladdin (40 nm, 1 ns): 32-bit multiplier 6351.338 µm², adder 277.9792, register 5.981433 per bit.
    # edge_npu's PE: an 8x8 multiplier (64/1024 of a 32x32), two 4x4 (2 x 16/1024), two 32-bit accumulators
    # (its int4 kind has 2 lanes) and 8 + 8 bits of operand registers.
    by_hand = 6351.338 * (64 + 2 * 16) / 1024 + 2 * (277.9792 + 32 * 5.981433) + 16 * 5.981433
    assert pe_um2(load_spec("edge_npu")) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(1629.91, abs=0.01)


def test_bitcell_table_is_reproduced_and_shrinks_with_the_node():
    for node, um2 in BITCELL_UM2.items():
        assert bitcell_um2(node) == pytest.approx(um2, rel=1e-12)
    nodes = np.linspace(5.0, 90.0, 200)
    cells = np.array([bitcell_um2(float(n)) for n in nodes])
    assert (np.diff(cells) > 0).all()


@pytest.mark.parametrize("preset", preset_names())
def test_directions(preset):
    spec = load_spec(preset)
    base = area_mm2(spec)
    assert set(base) == set(AREA_COMPONENTS) and all(float(v) >= 0 for v in base.values())
    total = sum(float(v) for v in base.values())
    assert total > 0
    # area grows with the array (linearly in PEs), the buffer, the lanes and a MAC kind's width
    assert float(area_mm2(spec, rows=2 * spec.pe_array.rows)["mac_array"]) == pytest.approx(2 * float(base["mac_array"]))
    sizes = np.array([16.0, 64.0, 512.0, 4096.0])
    assert (np.diff(area_mm2(spec, sram_kib=sizes)["sram"]) > 0).all()
    wider = dataclasses.replace(spec, macs=[*spec.macs, MacUnit(16, 16, 1)])
    assert float(area_mm2(wider)["mac_array"]) > float(base["mac_array"])
    lanes = dataclasses.replace(spec, shift_add_lanes=spec.shift_add_lanes + 64, outlier_lanes=spec.outlier_lanes + 8)
    assert float(area_mm2(lanes)["shift_adds"]) > float(base["shift_adds"])
    assert float(area_mm2(lanes)["outliers"]) > float(base["outliers"])
    # a smaller node shrinks every component
    smaller = area_mm2(dataclasses.replace(spec, technology_nm=spec.technology_nm / 2))
    for c in AREA_COMPONENTS:
        assert float(smaller[c]) < float(base[c]) or float(base[c]) == 0


def test_units_a_spec_lacks_take_no_area():
    spec = load_spec("eyeriss_like")
    assert spec.shift_add_lanes == 0 and spec.outlier_lanes == 0
    area = area_mm2(spec)
    assert float(area["shift_adds"]) == 0 and float(area["outliers"]) == 0


def test_register_files_take_sram_area_per_pe():
    spec = load_spec("eyeriss_like")  # 12 input, 224 weight (16-bit) and 24 partial-sum (32-bit) entries per PE
    bits = 12 * 16 + 224 * 16 + 24 * spec.accumulator_bits
    per_bit_mm2 = bitcell_um2(65.0) / 0.6 * 1e-6
    assert float(area_mm2(spec)["registers"]) == pytest.approx(168 * bits * per_bit_mm2, rel=1e-12)
    none = dataclasses.replace(spec, pe_array=dataclasses.replace(spec.pe_array, registers={}))
    assert float(area_mm2(none)["registers"]) == 0
