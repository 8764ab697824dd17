"""The cost model's properties: energy is the sum of its parts, more bits never cost less,
more bandwidth never adds latency, a bigger array never adds compute cycles (edge folds trimmed), no outliers
cost nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hw_models.cost import COMPONENTS, cost
from hw_models.spec import load_spec, preset_names
from conftest import random_init_workloads


@pytest.fixture(scope="module")
def deit_small_loads():
    return random_init_workloads("deit_small_patch16_224",
                                 [(method, bits) for method in ("minmax", "adfq") for bits in (8, 4)],
                                 {f"blocks.{i}.qkv_in": 1000.0 for i in range(12)})


@pytest.mark.parametrize("preset", ["edge_npu", "eyeriss_like", "edge_tpu_like"])
def test_energy_is_the_sum_of_its_parts(deit_small_loads, preset):
    result = cost(deit_small_loads["adfq", 4], load_spec(preset))
    parts = result.energy_pj()
    assert set(parts) == set(COMPONENTS) and all(v >= 0 for v in parts.values())
    assert result.total_energy_pj == pytest.approx(sum(parts.values()), rel=1e-12)
    assert result.total_energy_pj == pytest.approx(sum(sum(l.energy_pj.values()) for l in result.layers), rel=1e-12)
    summary = result.summary()
    on_array = summary["macs"] - (summary["macs_by_kind"]["shift"] if load_spec(preset).shift_add_lanes else 0)
    assert sum(summary["macs_by_precision"].values()) == on_array  # shift-adds run off the array
    assert all(0 < l.utilisation <= 1 for l in result.layers if l.utilisation is not None)
    assert summary["macs"] == deit_small_loads["adfq", 4].macs()
    assert summary["inferences_per_s"] == pytest.approx(1.0 / result.latency_s)


@pytest.mark.parametrize("preset", sorted({"edge_npu", "nvdla_small_like", "ethos_u55_like"}))
def test_more_bits_never_cost_less(deit_small_loads, preset):
    spec = load_spec(preset)
    for method in ("minmax", "adfq"):
        low, high = cost(deit_small_loads[method, 4], spec), cost(deit_small_loads[method, 8], spec)
        assert high.total_energy_pj >= low.total_energy_pj
        assert high.cycles >= low.cycles and high.weight_bits > low.weight_bits


def test_more_bandwidth_never_adds_latency_and_a_bigger_array_never_adds_compute(deit_small_loads):
    load = deit_small_loads["minmax", 8]
    base = load_spec("edge_npu")
    cycles = [cost(load, dataclasses.replace(base, dram=dataclasses.replace(base.dram, bandwidth_gb_s=bw))).cycles
              for bw in (0.5, 1, 2, 4, 8, 16, 64)]
    assert cycles == sorted(cycles, reverse=True) and cycles[0] > cycles[-1]
    shapes = ((4, 4), (8, 4), (8, 8), (16, 16), (32, 16), (64, 64), (512, 512), (1024, 1024))
    for dataflow in ("output_stationary", "weight_stationary"):
        compute = {edge_folds: [sum(l.compute_cycles for l in cost(load, dataclasses.replace(
            base, pe_array=dataclasses.replace(base.pe_array, rows=r, cols=c, dataflow=dataflow,
                                               edge_folds=edge_folds))).layers) for r, c in shapes]
            for edge_folds in ("trim", "full")}
        trim, full = compute["trim"], compute["full"]
        assert trim == sorted(trim, reverse=True) and trim[0] > trim[-1]
        # charged the whole array, an array far bigger than DeiT-Small's GEMMs pays for its empty PEs
        assert full[-1] > full[-2] and all(f >= t for f, t in zip(full, trim))


def test_zero_outliers_cost_nothing_on_the_outlier_path(deit_small_loads):
    load = deit_small_loads["adfq", 4]
    spec = load_spec("edge_npu")
    none = dataclasses.replace(load, gemms=[dataclasses.replace(g, outliers=0.0) for g in load.gemms])
    with_outliers, without = cost(load, spec), cost(none, spec)
    assert without.energy_pj()["outliers"] == 0 and without.outlier_bits == 0
    # stored as CSR rows: one more outlier in a layer costs its int16 code and a column index (K = 384: 9 bits)
    first = next(i for i, g in enumerate(load.gemms) if g.outliers)
    one_more = dataclasses.replace(load, gemms=[dataclasses.replace(g, outliers=g.outliers + (i == first))
                                                for i, g in enumerate(load.gemms)])
    assert load.gemms[first].k == 384 and cost(one_more, spec).outlier_bits - with_outliers.outlier_bits == 16 + 9
    assert with_outliers.energy_pj()["outliers"] > 0 and with_outliers.cycles > without.cycles
    assert {k: v for k, v in without.energy_pj().items() if k != "outliers"} == \
        {k: v for k, v in with_outliers.energy_pj().items() if k != "outliers"}


def test_every_preset_prices_every_format(deit_small_loads):
    for preset in preset_names():
        for load in deit_small_loads.values():
            summary = cost(load, load_spec(preset)).summary()
            assert summary["energy_per_inference_uj"] > 0 and summary["latency_ms"] > 0


def test_sweep_equals_cost_variant_by_variant(deit_small_loads):
    from hw_models.cost import sweep

    load, base = deit_small_loads["adfq", 4], load_spec("edge_npu")
    rows, cols = np.array([4, 16, 32, 64])[:, None], np.array([8, 16, 48])[None, :]
    sram = np.array([64.0, 512.0, 32768.0])[:, None, None]
    bandwidth = np.array([1.0, 8.5, 100.0])[:, None, None, None]
    swept = sweep(load, base, rows=rows, cols=cols, sram_kib=sram, bandwidth_gb_s=bandwidth)
    assert swept["cycles"].shape == (3, 3, 4, 3)
    for b, bw in enumerate(bandwidth.ravel()):
        for s, kib in enumerate(sram.ravel()):
            for i, r in enumerate(rows.ravel()):
                for j, c in enumerate(cols.ravel()):
                    spec = dataclasses.replace(base, pe_array=dataclasses.replace(base.pe_array, rows=int(r), cols=int(c)),
                                               sram=[dataclasses.replace(base.sram[0], size_kib=float(kib))],
                                               dram=dataclasses.replace(base.dram, bandwidth_gb_s=float(bw)))
                    one = cost(load, spec)
                    assert swept["cycles"][b, s, i, j] == one.cycles
                    assert swept["energy_pj"][b, s, i, j] == pytest.approx(one.total_energy_pj, rel=1e-12)
                    assert swept["dram_bits"][b, s, i, j] == pytest.approx(sum(l.dram_bits for l in one.layers))
                    for c, pj in one.energy_pj().items():
                        assert swept["energy_pj_by_component"][c][b, s, i, j] == pytest.approx(pj, rel=1e-12)
                    summary = one.summary()
                    assert swept["area_mm2"][b, s, i, j] == pytest.approx(summary["area_mm2"], rel=1e-12)
                    for c, mm2 in summary["area_mm2_by_component"].items():
                        assert swept["area_mm2_by_component"][c][b, s, i, j] == pytest.approx(mm2, rel=1e-12)


def test_node_scaling_follows_stillmaker_and_baas():
    """The fits reproduce the paper's erratum example (HP 32 nm at 0.9 V: 0.4571; 65 nm at 1.3 V: 2.604);
    Horowitz's figures stand at their own 45 nm and 0.9 V; at each node's nominal supply an on-chip energy
    falls with the node, a lower supply costs less, and DRAM energies never scale."""
    from hw_models.cost import unit_pj
    from hw_models.energy import ENERGY_FIT, UNIT_ENERGY, node_energy_factor, nominal_vdd

    assert node_energy_factor(32, 0.9) == pytest.approx(0.4571, abs=1e-4)
    assert node_energy_factor(65, 1.3) == pytest.approx(2.604, abs=1e-3)
    base = load_spec("edge_npu")
    at = lambda nm, vdd=None: dataclasses.replace(base, technology_nm=nm, vdd_v=vdd)  # noqa: E731
    for name in ("int8_mult", "sram_1mb_read"):
        assert unit_pj(at(45, 0.9), name) == pytest.approx(UNIT_ENERGY[name].pj, rel=1e-12)
    nodes = sorted(ENERGY_FIT, reverse=True) + [28.0, 12.0]
    energies = {nm: unit_pj(at(nm), "int8_mult") for nm in nodes}
    ordered = [energies[nm] for nm in sorted(energies, reverse=True)]
    assert all(b < a for a, b in zip(ordered, ordered[1:]))
    for nm in (65, 28, 7):
        assert unit_pj(at(nm, nominal_vdd(nm) * 0.9), "int32_add") < unit_pj(at(nm), "int32_add")
        assert unit_pj(at(nm), "dram_lpddr4") == UNIT_ENERGY["dram_lpddr4"].pj


def test_sram_energy_per_access_grows_with_capacity():
    """Horowitz's three SRAM reads (10 / 20 / 100 pJ per 64 bits at 8 KB / 32 KB / 1 MB) are reproduced, and
    between and beyond them a bigger array costs more per bit, a banked one (an access reaches one bank)
    less, while a level's own pj_per_bit overrides the model."""
    from hw_models.cost import level_pj_per_bit
    from hw_models.energy import SRAM_SIZES_KIB, UNIT_ENERGY, sram_pj_per_bit

    anchors = {name: UNIT_ENERGY[name].pj for name in SRAM_SIZES_KIB}
    for name, kib in SRAM_SIZES_KIB.items():
        assert float(sram_pj_per_bit(kib, anchors)) * 64 == pytest.approx({8: 10, 32: 20, 1024: 100}[int(kib)])
    sizes = 2.0 ** np.arange(-2, 17)  # 256 B .. 64 MiB
    per_bit = sram_pj_per_bit(sizes, anchors)
    assert (np.diff(per_bit) > 0).all()
    spec = load_spec("edge_npu")
    level = spec.sram[0]
    for kib in (16.0, 512.0, 8192.0):
        small = dataclasses.replace(level, size_kib=kib, banks=1)
        assert level_pj_per_bit(spec, dataclasses.replace(small, size_kib=2 * kib)) > level_pj_per_bit(spec, small)
        assert level_pj_per_bit(spec, dataclasses.replace(small, banks=4)) < level_pj_per_bit(spec, small)
        assert level_pj_per_bit(spec, dataclasses.replace(small, pj_per_bit=0.05)) == 0.05


def test_sram_size_sweep_trades_dram_traffic_for_access_energy(deit_small_loads):
    """Growing the buffer keeps more of DeiT-S on chip (DRAM traffic never rises and falls to zero once the
    weights are resident) while each access costs more: the energy is lowest at a size inside the range, not
    at the largest buffer (with one per-bit figure for every size it fell all the way)."""
    from hw_models.cost import sweep

    spec = load_spec("edge_npu")
    sizes = 2.0 ** np.arange(6, 17)  # 64 KiB .. 64 MiB
    for bits in (8, 4):
        swept = sweep(deit_small_loads["minmax", bits], spec, sram_kib=sizes)
        dram, sram = swept["dram_bits"], swept["energy_pj_by_component"]["sram"]
        assert (np.diff(dram) <= 0).all() and dram[0] > 0 and dram[-1] == 0
        assert (np.diff(sram) > 0).all()
        energy = swept["energy_pj"]
        assert (np.diff(energy) > 0).any() and energy[-1] > energy.min()  # no monotone preference for size
        if bits == 4:  # W4A4: the optimum is a mid-size buffer (2 MiB on edge_npu)
            assert 0 < int(np.argmin(energy)) < sizes.size - 1


def test_pe_register_files_price_every_mac_on_the_array(deit_small_loads):
    """Register files add per MAC on the array its input and weight read and its partial sum's read and
    write, at one 16-bit MAC per 16 bits accessed (Eyeriss); SRAM, DRAM and cycles do not change, and the
    shift-add lanes (off the array) read no PE registers."""
    from hw_models.cost import mac_pj, register_pj_per_bit

    load, base = deit_small_loads["adfq", 4], load_spec("edge_npu")
    assert cost(load, base).energy_pj()["registers"] == 0
    spec = dataclasses.replace(base, pe_array=dataclasses.replace(base.pe_array, registers={
        "inputs": 4, "weights": 4, "outputs": 2}))
    assert register_pj_per_bit(spec) == pytest.approx(mac_pj(spec, 16, 16) / 16)
    plain, with_rf = cost(load, base), cost(load, spec)
    for a, b in zip(plain.layers, with_rf.layers):
        assert (a.cycles, a.sram_bits, a.dram_bits) == (b.cycles, b.sram_bits, b.dram_bits)
        if b.kind == "shift" or not b.precision:
            assert b.energy_pj["registers"] == 0
            continue
        a_bits, w_bits = (int(x) for x in b.precision.split("x"))
        per_mac = a_bits + w_bits + 2 * spec.accumulator_bits
        assert b.energy_pj["registers"] == pytest.approx(b.macs * per_mac * register_pj_per_bit(spec), rel=1e-12)
        assert {**b.energy_pj, "registers": 0.0} == a.energy_pj
    only_weights = dataclasses.replace(spec, pe_array=dataclasses.replace(spec.pe_array, registers={"weights": 8}))
    assert 0 < cost(load, only_weights).energy_pj()["registers"] < with_rf.energy_pj()["registers"]


def test_each_sram_level_is_priced(deit_small_loads):
    """An outer level passes each operand once; the innermost carries the dataflow's reuse traffic."""
    load, base = deit_small_loads["minmax", 8], load_spec("edge_npu")
    local = dataclasses.replace(base.sram[0], name="local", size_kib=32.0)
    two = cost(load, dataclasses.replace(base, sram=[base.sram[0], local])).summary()
    one = cost(load, base).summary()
    assert set(two["sram_bytes_by_level"]) == {"global_buffer", "local"}
    assert two["sram_bytes_by_level"]["local"] == one["sram_bytes"]  # the same reuse traffic, now innermost
    assert 0 < two["sram_bytes_by_level"]["global_buffer"] < two["sram_bytes_by_level"]["local"]
    assert two["energy_uj"]["sram"] != one["energy_uj"]["sram"]
    for summary in (one, two):  # traffic, not energy: levels add up, DRAM carries the non-resident weights
        assert summary["sram_bytes"] == pytest.approx(sum(summary["sram_bytes_by_level"].values()))
        assert summary["dram_bytes"] >= summary["memory_bytes"]["weights"] > 20e6  # DeiT-S W8: ~22 MB
