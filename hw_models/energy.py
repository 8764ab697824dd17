"""Default unit energies, each with its source and technology node: what an operation or an access costs.

Values are per operation (or per bit moved) at 45 nm from Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, and the DRAM-per-bit figures of Accelergy's CACTI plug-in
(`cacti_wrapper.py`, which cites their origins); docs/references.md, "Unit energies", lists them with
their sources. A spec's `energy_pj` may override any entry by name (at the spec's own node).
Scaling to other nodes and to other operand widths is the cost model's job; the table holds only what
the sources state, and `sram_pj_per_bit` interpolates Horowitz's three SRAM sizes for any capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnitEnergy:
    pj: float
    per: str  # "op" or "bit"
    node_nm: float
    source: str


_HOROWITZ = "Horowitz, ISSCC 2014 (45 nm)"
_ACCELERGY = "Accelergy CACTI plug-in, DRAM per bit"

UNIT_ENERGY: dict[str, UnitEnergy] = {
    "int8_add": UnitEnergy(0.03, "op", 45, _HOROWITZ),
    "int32_add": UnitEnergy(0.1, "op", 45, _HOROWITZ),
    "int8_mult": UnitEnergy(0.2, "op", 45, _HOROWITZ),
    "int32_mult": UnitEnergy(3.1, "op", 45, _HOROWITZ),
    "fp16_add": UnitEnergy(0.4, "op", 45, _HOROWITZ),
    "fp16_mult": UnitEnergy(1.1, "op", 45, _HOROWITZ),
    "fp32_add": UnitEnergy(0.9, "op", 45, _HOROWITZ),
    "fp32_mult": UnitEnergy(3.7, "op", 45, _HOROWITZ),
    "sram_8kb_read": UnitEnergy(10.0 / 64, "bit", 45, _HOROWITZ + ": 10 pJ per 64-bit read of an 8 KB SRAM"),
    "sram_32kb_read": UnitEnergy(20.0 / 64, "bit", 45, _HOROWITZ + ": 20 pJ per 64-bit read of a 32 KB SRAM"),
    "sram_1mb_read": UnitEnergy(100.0 / 64, "bit", 45, _HOROWITZ + ": 100 pJ per 64-bit read of a 1 MB SRAM"),
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
