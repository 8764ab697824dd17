"""Default unit energies, each with its source and technology node: what an operation or an access costs.

Values are per operation (or per bit moved) at 45 nm from Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, and the DRAM-per-bit figures of Accelergy's CACTI plug-in
(`cacti_wrapper.py`, which cites their origins); docs/references.md, "Unit energies", lists them with
their sources. A spec's `energy_pj` may override any entry by name (at the spec's own node).
Scaling to other nodes and to other operand widths is the cost model's job; the table holds only what
the sources state.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    "dram_horowitz": UnitEnergy(1950.0 / 64, "bit", 45, _HOROWITZ + ": 1.3-2.6 nJ per 64 bits (mid-range)"),
    "dram_lpddr4": UnitEnergy(8.0, "bit", 45, _ACCELERGY),
    "dram_ddr3": UnitEnergy(70.0, "bit", 45, _ACCELERGY),
    "dram_hbm2": UnitEnergy(3.9, "bit", 45, _ACCELERGY),
}
