"""Default unit energies, each with its source and technology node, and their scaling to other nodes.

Values are per operation (or per bit moved) at 45 nm and 0.9 V from Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014, and the DRAM-per-bit figures of Accelergy's CACTI plug-in
(`cacti_wrapper.py`, which cites their origins); docs/references.md, "Unit energies", lists them with
their sources. A spec's `energy_pj` may override any entry by name (at the spec's own node).
`sram_pj_per_bit` interpolates Horowitz's three SRAM sizes for any capacity.

Node scaling (`node_energy_scale`): A. Stillmaker, B. Baas, "Scaling equations for the accurate
prediction of CMOS device performance from 180 nm to 7 nm", Integration, the VLSI Journal 58 (2017)
74-81, fit the energy per operation at each node as a V^2 + b V + c of the supply V (HSPICE on the
Predictive Technology Model; `ENERGY_FIT`: their bulk rows for 180-65 nm and high-performance rows from
45 nm down, as tabulated in UCLA NanoCAD's nodeScale, MIT licence; the HP 32 nm and 65 nm rows agree with
the paper's published erratum). An on-chip energy moves from its source (node, supply) to the spec's by
the ratio of the fits; between tabulated nodes the fit is interpolated in log(energy) over log(node).
Off-chip DRAM energies (no supply) do not scale.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnitEnergy:
    pj: float
    per: str  # "op" or "bit"
    node_nm: float
    source: str
    vdd_v: float | None = None  # the source's supply; None: off chip, not scaled with the node


_HOROWITZ = "Horowitz, ISSCC 2014 (45 nm, 0.9 V)"
_ACCELERGY = "Accelergy CACTI plug-in, DRAM per bit"
_H = {"node_nm": 45, "vdd_v": 0.9}

UNIT_ENERGY: dict[str, UnitEnergy] = {
    "int8_add": UnitEnergy(0.03, "op", source=_HOROWITZ, **_H),
    "int32_add": UnitEnergy(0.1, "op", source=_HOROWITZ, **_H),
    "int8_mult": UnitEnergy(0.2, "op", source=_HOROWITZ, **_H),
    "int32_mult": UnitEnergy(3.1, "op", source=_HOROWITZ, **_H),
    "fp16_add": UnitEnergy(0.4, "op", source=_HOROWITZ, **_H),
    "fp16_mult": UnitEnergy(1.1, "op", source=_HOROWITZ, **_H),
    "fp32_add": UnitEnergy(0.9, "op", source=_HOROWITZ, **_H),
    "fp32_mult": UnitEnergy(3.7, "op", source=_HOROWITZ, **_H),
    "sram_8kb_read": UnitEnergy(10.0 / 64, "bit", source=_HOROWITZ + ": 10 pJ per 64-bit read of an 8 KB SRAM", **_H),
    "sram_32kb_read": UnitEnergy(20.0 / 64, "bit", source=_HOROWITZ + ": 20 pJ per 64-bit read of a 32 KB SRAM", **_H),
    "sram_1mb_read": UnitEnergy(100.0 / 64, "bit", source=_HOROWITZ + ": 100 pJ per 64-bit read of a 1 MB SRAM", **_H),
    "dram_horowitz": UnitEnergy(1950.0 / 64, "bit", 45, _HOROWITZ + ": 1.3-2.6 nJ per 64 bits (mid-range)"),
    "dram_lpddr4": UnitEnergy(8.0, "bit", 45, _ACCELERGY),
    "dram_ddr3": UnitEnergy(70.0, "bit", 45, _ACCELERGY),
    "dram_hbm2": UnitEnergy(3.9, "bit", 45, _ACCELERGY),
}

SRAM_SIZES_KIB = {"sram_8kb_read": 8.0, "sram_32kb_read": 32.0, "sram_1mb_read": 1024.0}  # the entries' capacities


def sram_pj_per_bit(capacity_kib: np.ndarray | float, anchors: dict[str, float]) -> np.ndarray:
    """Read energy per bit of an SRAM array of `capacity_kib`, from the per-bit energies of the three sizes
    of SRAM_SIZES_KIB (`anchors`, by entry name): straight lines in log(energy) over log(capacity) between
    them, and the nearest segment's slope beyond (8 -> 32 KB: energy ~ capacity^0.50, 32 KB -> 1 MB:
    ~ capacity^0.46 with Horowitz's figures, the square-root growth of a wire-dominated array)."""
    sizes = np.log(np.array(list(SRAM_SIZES_KIB.values())))
    energies = np.log(np.array([anchors[name] for name in SRAM_SIZES_KIB]))
    x = np.log(np.asarray(capacity_kib, dtype=np.float64))
    segment = np.clip(np.searchsorted(sizes, x) - 1, 0, sizes.size - 2)
    slope = (energies[segment + 1] - energies[segment]) / (sizes[segment + 1] - sizes[segment])
    return np.exp(energies[segment] + slope * (x - sizes[segment]))


# Stillmaker & Baas (2017) energy fits per node (nm): energy ~ a V^2 + b V + c
ENERGY_FIT: dict[float, tuple[float, float, float]] = {
    180.0: (0.0, 24.64, -17.98),
    130.0: (7.171, -6.709, 2.904),
    90.0: (4.762, -4.781, 2.092),
    65.0: (3.755, -4.398, 1.975),
    45.0: (1.018, -0.3107, 0.1539),
    32.0: (0.8367, -0.4341, 0.1701),
    20.0: (0.373, -0.1582, 0.04104),
    16.0: (0.2958, -0.1241, 0.03024),
    14.0: (0.2363, -0.09675, 0.02239),
    10.0: (0.2068, -0.09311, 0.02375),
    7.0: (0.1776, -0.09097, 0.02447),
}
# The nominal supply (V) of the Predictive Technology Model card behind each fit (ptm.asu.edu: bulk
# 180-45 nm, HP 32 nm, PTM-MG HP 20-7 nm), the default of a spec without `vdd_v`
NOMINAL_VDD: dict[float, float] = {180.0: 1.8, 130.0: 1.3, 90.0: 1.2, 65.0: 1.1, 45.0: 1.0, 32.0: 0.9, 20.0: 0.9,
                                   16.0: 0.85, 14.0: 0.8, 10.0: 0.75, 7.0: 0.7}
NODE_RANGE_NM = (min(ENERGY_FIT), max(ENERGY_FIT))


def _bracket(node_nm: float) -> tuple[float, float, float]:
    """The tabulated nodes around `node_nm` and its position between them in log(node)."""
    if not NODE_RANGE_NM[0] <= node_nm <= NODE_RANGE_NM[1]:
        raise ValueError(f"{node_nm} nm is outside the node-scaling fits ({NODE_RANGE_NM[0]:g}-{NODE_RANGE_NM[1]:g} nm)")
    nodes = sorted(ENERGY_FIT)
    upper = next(n for n in nodes if n >= node_nm)
    lower = max((n for n in nodes if n <= node_nm), default=upper)
    t = 0.0 if upper == lower else math.log(node_nm / lower) / math.log(upper / lower)
    return lower, upper, t


@functools.lru_cache(maxsize=256)
def nominal_vdd(node_nm: float) -> float:
    """The nominal supply at `node_nm`, linear in log(node) between the tabulated nodes."""
    lower, upper, t = _bracket(node_nm)
    return NOMINAL_VDD[lower] + t * (NOMINAL_VDD[upper] - NOMINAL_VDD[lower])


@functools.lru_cache(maxsize=256)  # pure, and called for every unit energy of every GEMM priced
def node_energy_factor(node_nm: float, vdd_v: float) -> float:
    """Stillmaker & Baas's relative energy per operation at (node, supply); > 0 inside the fits' range."""
    lower, upper, t = _bracket(node_nm)
    values = []
    for node in (lower, upper):
        a, b, c = ENERGY_FIT[node]
        values.append(a * vdd_v**2 + b * vdd_v + c)
    if min(values) <= 0:
        raise ValueError(f"a supply of {vdd_v} V is outside the node-scaling fit at {node_nm} nm")
    return math.exp(math.log(values[0]) + t * (math.log(values[1]) - math.log(values[0])))


def node_energy_scale(unit: UnitEnergy, node_nm: float, vdd_v: float) -> float:
    """The factor that moves `unit` from its source's node and supply to (node_nm, vdd_v); 1 off chip."""
    if unit.vdd_v is None:
        return 1.0
    return node_energy_factor(node_nm, vdd_v) / node_energy_factor(unit.node_nm, unit.vdd_v)
