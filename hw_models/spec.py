"""Accelerator specification: a typed YAML schema, validated like the experiment config.

An accelerator is a PE array (rows x cols, a dataflow) of MAC units that take given operand widths,
shift-add lanes for log-coded operands, lanes for PPOQ's sparse outliers, an accumulator width, a vector
unit for the non-linear ops, on-chip SRAM levels and DRAM. Unknown keys (with a did-you-mean), wrong
types and impossible values are UserInputErrors naming the field, so `hardware:` in an experiment
config and a preset file fail the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from adfq_sim.errors import UserInputError
from adfq_sim.schema import build_dataclass, check_choice, read_yaml_mapping
from hw_models.dataflow import DATAFLOWS, EDGE_FOLDS
from hw_models.energy import NODE_RANGE_NM, UNIT_ENERGY, node_energy_factor, nominal_vdd

VECTOR_OPS = ("layernorm", "softmax", "gelu", "requant", "add")
REGISTER_OPERANDS = ("inputs", "weights", "outputs")


@dataclass(frozen=True)
class PEArray:
    """rows x cols PEs; `registers`: a PE-local register file per operand (entries per PE; an operand absent
    has none), which serves every MAC's use of that operand inside the array; `edge_folds`: whether a fold
    that uses part of the array costs the whole array's rows and columns ("full", SCALE-Sim's count: no PE
    bypass) or only its own ("trim")."""

    rows: int = 16
    cols: int = 16
    dataflow: str = "output_stationary"
    registers: dict = field(default_factory=dict)
    edge_folds: str = "full"


@dataclass(frozen=True)
class MacUnit:
    """A multiplier kind of every PE: operands up to a_bits x w_bits, `lanes` MACs per PE per cycle."""

    a_bits: int = 8
    w_bits: int = 8
    lanes: int = 1


@dataclass(frozen=True)
class VectorUnit:
    """The unit for non-GEMM integer ops: `lanes` elements per cycle, each op costing its cycles per element."""

    lanes: int = 16
    cycles_per_element: dict = field(default_factory=lambda: {"layernorm": 4.0, "softmax": 6.0, "gelu": 2.0,
                                                                "requant": 1.0, "add": 1.0})


@dataclass(frozen=True)
class SramLevel:
    name: str = "global_buffer"
    size_kib: float = 512.0
    width_bits: int = 128
    banks: int = 1
    pj_per_bit: Optional[float] = None  # None: the cost model's default for the size and node


@dataclass(frozen=True)
class Dram:
    bandwidth_gb_s: float = 8.0
    pj_per_bit: float = UNIT_ENERGY["dram_lpddr4"].pj


@dataclass(frozen=True)
class AcceleratorSpec:
    name: str = "accelerator"
    technology_nm: float = 28.0
    vdd_v: Optional[float] = None  # supply; None: the node's nominal (energy.nominal_vdd)
    clock_mhz: float = 800.0
    pe_array: PEArray = field(default_factory=PEArray)
    macs: list[MacUnit] = field(default_factory=lambda: [MacUnit(8, 8, 1), MacUnit(4, 4, 2)])
    shift_add_lanes: int = 256  # log-coded operand x weight by shift + add, per cycle (0: none)
    outlier_lanes: int = 16  # sparse outlier MACs per cycle (0: none)
    accumulator_bits: int = 32
    vector_unit: VectorUnit = field(default_factory=VectorUnit)
    sram: list[SramLevel] = field(default_factory=lambda: [SramLevel()])
    dram: Dram = field(default_factory=Dram)
    energy_pj: dict = field(default_factory=dict)  # unit-energy overrides by UNIT_ENERGY name, at this node

    @property
    def widest_mac(self) -> MacUnit:
        """The MAC kind with the widest operands (a_bits x w_bits): the one the PE's registers and the
        peer tools' single MAC are sized for."""
        return max(self.macs, key=lambda mac: mac.a_bits * mac.w_bits)

    @property
    def register_bits(self) -> dict[str, int]:
        """Bits per entry of each register file the spec has: inputs and weights at the widest MAC kind's
        operand widths, outputs (partial sums) at accumulator_bits."""
        width = {"inputs": self.widest_mac.a_bits, "weights": self.widest_mac.w_bits, "outputs": self.accumulator_bits}
        return {operand: width[operand] for operand in self.pe_array.registers}

    @property
    def supply_v(self) -> float:
        """The supply the energies scale to: `vdd_v`, else the node's nominal."""
        return nominal_vdd(self.technology_nm) if self.vdd_v is None else self.vdd_v

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(value: float, where: str) -> None:
    if not value > 0:
        raise UserInputError(f"{where}: must be > 0, got {value}")


def _positive_number(value: object, where: str) -> None:
    """A value from a free-form mapping (no schema type): a number > 0, not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserInputError(f"{where}: must be a number > 0, got {value!r}")


def _validate(spec: AcceleratorSpec) -> None:
    for key in ("technology_nm", "clock_mhz"):
        _positive(getattr(spec, key), key)
    low, high = NODE_RANGE_NM
    if not low <= spec.technology_nm <= high:
        raise UserInputError(f"technology_nm: must be in {low:g}..{high:g} (the range of the node-scaling fits), "
                             f"got {spec.technology_nm}")
    if spec.vdd_v is not None:
        _positive(spec.vdd_v, "vdd_v")
        try:
            node_energy_factor(spec.technology_nm, spec.vdd_v)
        except ValueError as exc:
            raise UserInputError(f"vdd_v: {exc}") from None
    for key in ("shift_add_lanes", "outlier_lanes"):  # 0: no such unit (the MAC array does the work)
        if getattr(spec, key) < 0:
            raise UserInputError(f"{key}: must be >= 0, got {getattr(spec, key)}")
    _positive(spec.pe_array.rows, "pe_array.rows")
    _positive(spec.pe_array.cols, "pe_array.cols")
    check_choice(spec.pe_array.dataflow, DATAFLOWS, "pe_array.dataflow")
    check_choice(spec.pe_array.edge_folds, EDGE_FOLDS, "pe_array.edge_folds")
    for operand, entries in spec.pe_array.registers.items():
        check_choice(operand, REGISTER_OPERANDS, "pe_array.registers")
        if isinstance(entries, bool) or not isinstance(entries, int) or entries <= 0:
            raise UserInputError(f"pe_array.registers.{operand}: must be an integer > 0 (entries per PE), "
                                 f"got {entries!r}")
    if not spec.macs:
        raise UserInputError("macs: at least one multiplier kind is needed")
    for i, mac in enumerate(spec.macs):
        for key in ("a_bits", "w_bits"):
            if not 2 <= getattr(mac, key) <= 16:
                raise UserInputError(f"macs[{i}].{key}: must be in 2..16, got {getattr(mac, key)}")
        _positive(mac.lanes, f"macs[{i}].lanes")
    if not 16 <= spec.accumulator_bits <= 64:
        raise UserInputError(f"accumulator_bits: must be in 16..64, got {spec.accumulator_bits}")
    _positive(spec.vector_unit.lanes, "vector_unit.lanes")
    for op, cycles in spec.vector_unit.cycles_per_element.items():
        check_choice(op, VECTOR_OPS, "vector_unit.cycles_per_element")
        _positive_number(cycles, f"vector_unit.cycles_per_element.{op}")
    missing = set(VECTOR_OPS) - set(spec.vector_unit.cycles_per_element)
    if missing:
        raise UserInputError(f"vector_unit.cycles_per_element: missing {', '.join(sorted(missing))}")
    if not spec.sram:
        raise UserInputError("sram: at least one on-chip level is needed")
    names = [level.name for level in spec.sram]
    if len(set(names)) != len(names):
        raise UserInputError(f"sram: level names must be unique, got {names}")
    for i, level in enumerate(spec.sram):
        for key in ("size_kib", "width_bits", "banks"):
            _positive(getattr(level, key), f"sram[{i}].{key}")
        if level.pj_per_bit is not None:
            _positive(level.pj_per_bit, f"sram[{i}].pj_per_bit")
    _positive(spec.dram.bandwidth_gb_s, "dram.bandwidth_gb_s")
    _positive(spec.dram.pj_per_bit, "dram.pj_per_bit")
    for name, pj in spec.energy_pj.items():
        check_choice(name, UNIT_ENERGY, "energy_pj")
        _positive_number(pj, f"energy_pj.{name}")


def parse_spec(data: dict, where: str = "") -> AcceleratorSpec:
    """An AcceleratorSpec from a mapping; errors name the field (prefixed by `where`)."""
    try:
        spec = build_dataclass(AcceleratorSpec, data, "")
        _validate(spec)
    except UserInputError as exc:
        raise UserInputError(f"{where}{exc}") from None
    return spec


def preset_names() -> list[str]:
    folder = resources.files("hw_models.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(hardware: str | dict) -> AcceleratorSpec:
    """A preset by name, a YAML file path, or an inline mapping (an experiment config's `hardware:`)."""
    if isinstance(hardware, dict):
        return parse_spec(hardware, "hardware.")
    if hardware in preset_names():
        path = Path(str(resources.files("hw_models.presets") / f"{hardware}.yaml"))
        return parse_spec(read_yaml_mapping(path, "accelerator spec"), f"{path}: ")
    if hardware.endswith((".yaml", ".yml")):
        path = Path(hardware)
        return parse_spec(read_yaml_mapping(path, "accelerator spec"), f"{path}: ")
    import difflib

    guess = difflib.get_close_matches(hardware, preset_names(), n=1)
    hint = f"did you mean '{guess[0]}'?" if guess else f"presets: {', '.join(preset_names())}"
    raise UserInputError(f"hardware: unknown accelerator preset {hardware!r} ({hint})")


def load_specs(hardware: str | dict | list) -> list[AcceleratorSpec]:
    """The experiment config's `hardware:`, one accelerator or a list of them (compared side by side);
    the first is the one the per-layer breakdown describes. Names must differ: they key the results."""
    items = hardware if isinstance(hardware, list) else [hardware]
    if not items:
        raise UserInputError("hardware: the list is empty; name at least one preset, spec file or mapping")
    specs = []
    for i, item in enumerate(items):
        try:
            specs.append(load_spec(item))
        except UserInputError as exc:
            raise UserInputError(f"hardware[{i}]: {exc}" if isinstance(hardware, list) else str(exc)) from None
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UserInputError(f"hardware[{i}]: accelerator name {name!r} repeats an earlier entry's; "
                                 "names key the results, give each spec its own `name`")
    return specs
