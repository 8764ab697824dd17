"""Silicon area of an accelerator spec, by component, from cited unit areas.

Logic. Aladdin's functional-unit library (Shao et al., "Aladdin: a pre-RTL, power-performance accelerator
simulator", ISCA 2014; `common/power_func.h` of github.com/harvard-acc/ALADDIN) gives the area of 32-bit
integer units synthesised on a commercial 40 nm library at 1 ns: multiplier 6,351.3 µm², adder 278.0 µm²,
shifter 519.8 µm², and a register 5.98 µm² per bit. A unit of other widths scales as its structure does:
an a x w array multiplier with its partial products (a * w / 32^2), an adder and a register with the
width, a barrel shifter with width x log2(width) multiplexers. To the spec's node, logic area scales with
the square of the feature size (node / 40)^2, the first-order (Dennard) rule: no cited per-node logic
density is used.

SRAM. A level's area is its bits times the 6T bitcell area of the spec's node over an array efficiency.
Bitcell areas are the foundries' published high-density cells (`BITCELL_UM2`, sources beside each entry),
interpolated on straight lines in log(area) over log(node). The array efficiency (the fraction of a
macro's area in bitcells; the rest is decoders, sense amplifiers and I/O) is our assumption,
`SRAM_ARRAY_EFFICIENCY`; banking adds no periphery in this model.

What each component holds (a PE is one position of the array):
- `mac_array`: per PE, each MAC kind's `lanes` multipliers (kinds do not share multipliers), one
  accumulator (adder and register of accumulator_bits) per lane of the kind with the most lanes, and the
  operand registers of the widest kind (a_bits + w_bits) that pass operands to the neighbours;
- `registers`: per PE its register files (`pe_array.registers`), entries x width (inputs and weights at
  the widest MAC kind's operand widths, outputs at accumulator_bits), priced as SRAM arrays (bitcells over
  the array efficiency, below; Eyeriss's 224-entry filter scratchpad is one): flip-flops, 5.98 µm² a bit
  at 40 nm against a 0.24 µm² bitcell, would make its register files alone larger than its whole die;
- `shift_adds`: per lane a barrel shifter, an adder and a register, all of accumulator_bits;
- `outliers`: per lane a 16 x w_bits multiplier (PPOQ's int16 outlier codes against the widest MAC
  kind's weights) and an accumulator;
- `vector`: per lane a 32-bit multiplier, adder and shifter (requantization's multiply-shift-add) and a
  32-bit register;
- `sram`: every on-chip level.
DRAM is off chip and has no area here.
"""

from __future__ import annotations

import math

import numpy as np

from adfq_sim.formats import OUTLIER_BITS
from hw_models.spec import AcceleratorSpec

ALADDIN_NODE_NM = 40.0
ALADDIN_WIDTH = 32  # the width of Aladdin's characterised integer units
MULT_32_UM2 = 6351.338
ADD_32_UM2 = 277.9792
SHIFTER_32_UM2 = 519.7551
REGISTER_BIT_UM2 = 5.981433
VECTOR_BITS = 32  # the vector unit's datapath width (int32 ops)

# 6T high-density SRAM bitcell (µm²) by node (nm), as published by the foundry
BITCELL_UM2 = {
    65.0: 0.570,  # Intel, Bai et al., IEDM 2004
    45.0: 0.346,  # Intel, Mistry et al., IEDM 2007
    32.0: 0.171,  # Intel, Natarajan et al., IEDM 2008
    22.0: 0.092,  # Intel, Auth et al., VLSI Technology 2012
    16.0: 0.070,  # TSMC, Wu et al., IEDM 2013
    14.0: 0.0588,  # Intel, Natarajan et al., IEDM 2014
    10.0: 0.0312,  # Intel, Auth et al., IEDM 2017
    7.0: 0.027,  # TSMC, Wu et al., IEDM 2016
}
SRAM_ARRAY_EFFICIENCY = 0.6  # our assumption: bitcells' share of an SRAM macro's area

AREA_COMPONENTS = ("mac_array", "registers", "shift_adds", "outliers", "vector", "sram")


def bitcell_um2(node_nm: float) -> float:
    """The 6T bitcell area at `node_nm`: log-log interpolation of BITCELL_UM2, the nearest segment beyond."""
    nodes = np.log(np.array(sorted(BITCELL_UM2)))
    areas = np.log(np.array([BITCELL_UM2[n] for n in sorted(BITCELL_UM2)]))
    x = math.log(node_nm)
    i = int(np.clip(np.searchsorted(nodes, x) - 1, 0, nodes.size - 2))
    slope = (areas[i + 1] - areas[i]) / (nodes[i + 1] - nodes[i])
    return float(math.exp(areas[i] + slope * (x - nodes[i])))


def _mult(a_bits: int, b_bits: int) -> float:
    return MULT_32_UM2 * a_bits * b_bits / ALADDIN_WIDTH**2


def _add(bits: int) -> float:
    return ADD_32_UM2 * bits / ALADDIN_WIDTH


def _shifter(bits: int) -> float:
    return SHIFTER_32_UM2 * bits * math.log2(bits) / (ALADDIN_WIDTH * math.log2(ALADDIN_WIDTH))


def _accumulator(bits: int) -> float:
    return _add(bits) + REGISTER_BIT_UM2 * bits


def pe_um2(spec: AcceleratorSpec) -> float:
    """One PE's area at 40 nm (µm²): its multipliers, accumulators and operand registers."""
    multipliers = sum(mac.lanes * _mult(mac.a_bits, mac.w_bits) for mac in spec.macs)
    widest = spec.widest_mac
    accumulators = max(mac.lanes for mac in spec.macs) * _accumulator(spec.accumulator_bits)
    return multipliers + accumulators + REGISTER_BIT_UM2 * (widest.a_bits + widest.w_bits)


def area_mm2(spec: AcceleratorSpec, *, rows: np.ndarray | int | None = None, cols: np.ndarray | int | None = None,
             sram_kib: np.ndarray | float | None = None) -> dict[str, np.ndarray]:
    """Area (mm²) by AREA_COMPONENTS at the spec's node; `rows`, `cols` and `sram_kib` (the outermost
    level's size) override the spec's and broadcast, as in `cost.sweep`."""
    rows = np.asarray(spec.pe_array.rows if rows is None else rows, dtype=np.float64)
    cols = np.asarray(spec.pe_array.cols if cols is None else cols, dtype=np.float64)
    outer_kib = np.asarray(spec.sram[0].size_kib if sram_kib is None else sram_kib, dtype=np.float64)
    logic = (spec.technology_nm / ALADDIN_NODE_NM) ** 2 * 1e-6  # µm² at 40 nm -> mm² at the node
    acc = spec.accumulator_bits
    sram_kib_total = outer_kib + sum(level.size_kib for level in spec.sram[1:])
    sram_bit_mm2 = bitcell_um2(spec.technology_nm) / SRAM_ARRAY_EFFICIENCY * 1e-6
    vector_lane = (_mult(VECTOR_BITS, VECTOR_BITS) + _add(VECTOR_BITS) + _shifter(VECTOR_BITS)
                   + REGISTER_BIT_UM2 * VECTOR_BITS)
    widest = spec.widest_mac
    register_bits = sum(spec.pe_array.registers[operand] * bits for operand, bits in spec.register_bits.items())
    return {
        "mac_array": rows * cols * pe_um2(spec) * logic,
        "registers": rows * cols * register_bits * sram_bit_mm2,
        "shift_adds": np.asarray(spec.shift_add_lanes * (_shifter(acc) + _accumulator(acc)) * logic),
        "outliers": np.asarray(spec.outlier_lanes * (_mult(OUTLIER_BITS, widest.w_bits) + _accumulator(acc)) * logic),
        "vector": np.asarray(spec.vector_unit.lanes * vector_lane * logic),
        "sram": sram_kib_total * 1024 * 8 * sram_bit_mm2,
    }
