"""What one inference costs on an accelerator: compute cycles, memory traffic, energy, latency, per layer.

The workload (`workload.py`) is read off the IntegerProgram, so these are the ops the simulator executes.
The model, and every assumption in it:
- Compute. A GEMM runs on the PE array with the narrowest MAC kind whose operand widths cover it
  (`dataflow.gemm_cycles`, lanes from that kind); a log-coded operand (kind "shift") runs on the
  shift-add lanes when the spec has them (one shift + add per lane per cycle), else on the array; PPOQ
  outliers run on the outlier lanes (else on the array), one MAC per outlier and output channel.
  Vector ops take elements x cycles_per_element / lanes.
- Memory. Weights (codes plus a 32-bit rule and an 8-bit zero-point per output channel) are read from
  DRAM once per inference, unless all of them fit in the on-chip SRAM (then they stay resident: no DRAM
  weight traffic). A GEMM's input and output activations stay on chip when they fit in the SRAM beside
  its weight tile, else they are read from / written to DRAM once. SRAM traffic follows the dataflow's
  reuse at the innermost level (the last of `sram`; every outer level passes each operand once):
  output-stationary reads A once per column fold and B once per row fold and writes each output
  once (at the width the program stores it: codes, residual codes or int32 scores); weight-stationary
  reads each weight once, A once per column fold, and writes + reads the partial sums
  (accumulator_bits wide) once per row fold after the first.
- Latency of a layer is the larger of its compute cycles and its memory cycles (DRAM bytes over the
  bandwidth per cycle; SRAM bits over width x banks per cycle): each layer is either compute- or
  bandwidth-bound, no overlap across layers.
- Energy. A MAC costs its multiplier's int8_mult x (a x w) / 64, a and w the widths of the MAC kind
  that runs it (quadratic in width, the Accelergy / Aladdin convention: 6-bit operands on an 8x8
  multiplier cost 8x8), and its accumulation int32_add x accumulator_bits / 32 (linear); a shift-add
  costs a tenth of an int8 multiply (our assumption, of the order of an 8-bit add; no published figure
  gives it: docs/references.md, "Shifts") plus the accumulation; an outlier MAC is a 16 x w-bit
  multiply plus the accumulation; a vector op costs one int32 add per element and cycle of work. A PE
  register file (`pe_array.registers`, per operand) serves every MAC on the array: each MAC reads its
  input and weight from them and reads and writes its partial sum, at the energy per bit of Eyeriss's
  register file (`register_pj_per_bit`: one access costs one 16-bit MAC); the SRAM traffic above stays
  the dataflow's fold traffic. Without register files that in-array reuse costs nothing. An
  SRAM level costs its pj_per_bit, else the read energy per bit of one of its banks (size / banks),
  interpolated over capacity between Horowitz's 8 KB, 32 KB and 1 MB reads (`energy.sram_pj_per_bit`:
  a bigger buffer costs more per access, a banked one less), writes as reads; DRAM the spec's
  pj_per_bit. On-chip unit energies (logic and SRAM) scale from their source's node and supply (Horowitz:
  45 nm, 0.9 V) to the spec's by Stillmaker & Baas's fits (`energy.node_energy_scale`); `energy_pj`
  overrides any unit at the spec's node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from adfq_sim.formats import OUTLIER_BITS
from hw_models.area import area_mm2
from hw_models.dataflow import gemm_cycles
from hw_models.dataflow import utilisation as utilisation_of
from hw_models.energy import SRAM_SIZES_KIB, UNIT_ENERGY, node_energy_scale, sram_pj_per_bit
from hw_models.spec import AcceleratorSpec, MacUnit, SramLevel
from hw_models.workload import GemmOp, VectorOp, Workload

RULE_BITS = 32 + 8  # per output channel: the dyadic rule (mantissa and shift) and a zero-point
SHIFT_ADD_OF_MULT = 0.1  # a shift-add's multiply-part energy relative to an int8 multiply

COMPONENTS = ("dense_macs", "shift_adds", "outliers", "vector", "registers", "sram", "dram")
RF_MAC_BITS = 16  # Eyeriss's register-file access costs one 16-bit MAC (Chen et al., ISCA 2016)


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str  # dense | shift | twin | vector
    macs: int
    compute_cycles: int
    memory_cycles: int
    sram_bits: float
    dram_bits: float
    energy_pj: dict[str, float]  # by COMPONENTS
    precision: str = ""  # the MAC kind that runs a GEMM on the array ("8x8"), "" otherwise
    utilisation: float | None = None  # MACs / (compute cycles x PEs x lanes) on the array, fold edges included
    sram_bits_by_level: dict[str, float] | None = None

    @property
    def cycles(self) -> int:
        return max(self.compute_cycles, self.memory_cycles)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_cycles >= self.memory_cycles else "memory"


def unit_pj(spec: AcceleratorSpec, name: str) -> float:
    """A unit energy at the spec's node and supply: its override, else the table's value scaled from its
    source's node and supply by Stillmaker & Baas's fits (`energy.node_energy_scale`; DRAM unscaled)."""
    if name in spec.energy_pj:
        return float(spec.energy_pj[name])
    unit = UNIT_ENERGY[name]
    return unit.pj * node_energy_scale(unit, spec.technology_nm, spec.supply_v)


def mac_unit(spec: AcceleratorSpec, a_bits: int, b_bits: int, name: str) -> MacUnit:
    """The narrowest MAC kind whose operand widths cover (a_bits, b_bits)."""
    fitting = [u for u in spec.macs if u.a_bits >= a_bits and u.w_bits >= b_bits]
    if not fitting:
        raise ValueError(f"{spec.name}: no MAC kind takes {a_bits}x{b_bits}-bit operands ({name})")
    return min(fitting, key=lambda u: (u.a_bits * u.w_bits, -u.lanes))


def mac_pj(spec: AcceleratorSpec, a_bits: int, b_bits: int) -> float:
    """One MAC on an a_bits x b_bits multiplier: the multiply (quadratic in width) and the accumulation."""
    accumulate = unit_pj(spec, "int32_add") * spec.accumulator_bits / 32
    return unit_pj(spec, "int8_mult") * a_bits * b_bits / 64 + accumulate


def register_pj_per_bit(spec: AcceleratorSpec) -> float:
    """A PE-local register file's energy per bit accessed: Eyeriss's normalised costs put one access of its
    0.5 KB register file at the energy of one 16-bit MAC (Chen, Emer, Sze, ISCA 2016), at this node."""
    return mac_pj(spec, RF_MAC_BITS, RF_MAC_BITS) / RF_MAC_BITS


def register_bits_per_mac(spec: AcceleratorSpec, unit: MacUnit) -> int:
    """Register-file bits one MAC on the array moves: its input and weight read where the spec has those
    register files, and its partial sum read and written where it has an output one."""
    width = {"inputs": unit.a_bits, "weights": unit.w_bits, "outputs": 2 * spec.accumulator_bits}
    return sum(width[operand] for operand in spec.pe_array.registers)


def _weight_bits(g: GemmOp) -> int:
    return g.n * g.k * g.b_bits + g.n * RULE_BITS


def level_pj_per_bit(spec: AcceleratorSpec, level: SramLevel, size_kib: np.ndarray | float | None = None
                     ) -> np.ndarray:
    """A level's energy per bit moved: its own figure, else the read energy of one of its banks (an access
    reaches one bank of size / banks; `size_kib` overrides the level's size, a sweep axis) interpolated over
    capacity from Horowitz's 8 KB / 32 KB / 1 MB SRAM reads (`energy.sram_pj_per_bit`)."""
    if level.pj_per_bit is not None:
        return np.asarray(level.pj_per_bit, dtype=np.float64)
    size = level.size_kib if size_kib is None else size_kib
    return sram_pj_per_bit(np.asarray(size, dtype=np.float64) / level.banks,
                           {name: unit_pj(spec, name) for name in SRAM_SIZES_KIB})


def _onchip_bits(spec: AcceleratorSpec, outer_kib: np.ndarray | float) -> np.ndarray:
    """Total on-chip SRAM in bits, the outermost level at `outer_kib` (a sweep axis) and the rest as specified."""
    return (np.asarray(outer_kib, dtype=np.float64) + sum(level.size_kib for level in spec.sram[1:])) * 1024 * 8


def _weights_resident(load: Workload, spec: AcceleratorSpec, outer_kib: np.ndarray | float) -> np.ndarray:
    """All weights (with their rules and zero-points) fit on chip: then they stay there across inferences."""
    return float(sum(_weight_bits(g) for g in load.gemms if g.weights)) <= _onchip_bits(spec, outer_kib)


def _gemm_arrays(g: GemmOp, spec: AcceleratorSpec, rows: np.ndarray, cols: np.ndarray, resident: np.ndarray,
                 outer_kib: np.ndarray, bandwidth_gb_s: np.ndarray) -> dict[str, np.ndarray]:
    """One GEMM's cycles, traffic and energy for variants of `spec` that differ in the broadcast arrays
    (array shape, the outermost SRAM level's size, DRAM bandwidth): the one implementation of the
    model, scalar or swept."""
    sram_bits_total = _onchip_bits(spec, outer_kib)
    dataflow = spec.pe_array.dataflow
    unit = mac_unit(spec, g.a_bits, g.b_bits, g.name)
    zero = np.zeros(np.broadcast(rows, cols, sram_bits_total, bandwidth_gb_s).shape)
    energy = {c: zero for c in COMPONENTS}
    if g.kind == "shift" and spec.shift_add_lanes > 0:
        compute = zero + math.ceil(g.macs / spec.shift_add_lanes)
        accumulate = unit_pj(spec, "int32_add") * spec.accumulator_bits / 32
        energy["shift_adds"] = zero + g.macs * (SHIFT_ADD_OF_MULT * unit_pj(spec, "int8_mult") + accumulate)
    else:
        compute = zero + gemm_cycles(g.m, g.n, g.k, g.groups, rows, cols, unit.lanes, dataflow,
                                     spec.pe_array.edge_folds)
        energy["dense_macs"] = zero + g.macs * mac_pj(spec, unit.a_bits, unit.w_bits)  # the multiplier that runs it
        energy["registers"] = zero + g.macs * register_bits_per_mac(spec, unit) * register_pj_per_bit(spec)
    if g.outlier_macs:
        lanes = spec.outlier_lanes if spec.outlier_lanes else rows * cols
        compute = compute + np.ceil(g.outlier_macs / lanes)
        energy["outliers"] = zero + g.outlier_macs * mac_pj(spec, OUTLIER_BITS, g.b_bits)
    a_bits = g.groups * g.m * g.k * g.a_bits
    b_bits = g.groups * g.k * g.n * g.b_bits if not g.weights else _weight_bits(g)
    out_bits = g.groups * g.m * g.n * g.out_bits
    partial_bits = g.groups * g.m * g.n * spec.accumulator_bits
    # SRAM reuse by the dataflow (fold counts along the array's rows and columns)
    col_folds = np.ceil(g.n / cols)
    if dataflow == "output_stationary":
        sram = a_bits * col_folds + b_bits * np.ceil(g.m / rows) + out_bits
    else:
        row_folds = np.ceil(math.ceil(g.k / unit.lanes) / rows)
        sram = b_bits + a_bits * col_folds + partial_bits * 2 * (row_folds - 1) + out_bits
    # the innermost level (last in spec.sram) feeds the array with the reuse traffic; every outer level
    # passes each operand once (compulsory traffic)
    compulsory = a_bits + b_bits + out_bits
    levels = [zero + compulsory for _ in spec.sram[:-1]] + [zero + sram]
    sram = sum(levels)
    dram = zero + np.where(g.weights & ~resident, b_bits, 0.0)
    spill = a_bits + out_bits + np.minimum(b_bits, sram_bits_total) > sram_bits_total
    dram = dram + np.where(spill, a_bits + out_bits, 0.0)  # activations that do not fit beside the weights
    energy["sram"] = sum(bits * level_pj_per_bit(spec, level, outer_kib if i == 0 else None)
                         for i, (bits, level) in enumerate(zip(levels, spec.sram)))
    energy["dram"] = dram * spec.dram.pj_per_bit
    dram_bits_per_cycle = bandwidth_gb_s * 8e9 / (spec.clock_mhz * 1e6)
    memory = dram / dram_bits_per_cycle
    for bits, level in zip(levels, spec.sram):
        memory = np.maximum(memory, bits / (level.width_bits * level.banks))
    return {"compute": compute, "memory": np.ceil(memory), "sram_bits": sram, "sram_levels": levels,
            "dram_bits": dram, "energy": energy}


def _gemm_cost(g: GemmOp, spec: AcceleratorSpec, resident: bool) -> LayerCost:
    rows, cols = spec.pe_array.rows, spec.pe_array.cols
    r = _gemm_arrays(g, spec, np.asarray(rows), np.asarray(cols), np.asarray(resident),
                     np.asarray(spec.sram[0].size_kib, dtype=np.float64), np.asarray(spec.dram.bandwidth_gb_s))
    precision, utilisation = "", None
    if not (g.kind == "shift" and spec.shift_add_lanes > 0):  # on the PE array
        unit = mac_unit(spec, g.a_bits, g.b_bits, g.name)
        precision = f"{unit.a_bits}x{unit.w_bits}"
        utilisation = float(utilisation_of(g.m, g.n, g.k, g.groups, rows, cols, unit.lanes, spec.pe_array.dataflow,
                                           spec.pe_array.edge_folds))
    by_level = {level.name: float(bits) for level, bits in zip(spec.sram, r["sram_levels"])}
    return LayerCost(g.name, g.kind, g.macs, int(r["compute"]), int(r["memory"]), float(r["sram_bits"]),
                     float(r["dram_bits"]), {c: float(r["energy"][c]) for c in COMPONENTS}, precision, utilisation,
                     by_level)


def _vector_cost(v: VectorOp, spec: AcceleratorSpec) -> LayerCost:
    work = v.elements * spec.vector_unit.cycles_per_element[v.kind]
    energy = dict.fromkeys(COMPONENTS, 0.0)
    energy["vector"] = work * unit_pj(spec, "int32_add")
    return LayerCost(v.name, "vector", 0, int(math.ceil(work / spec.vector_unit.lanes)), 0, 0.0, 0.0, energy)


@dataclass(frozen=True)
class Cost:
    spec: AcceleratorSpec
    layers: list[LayerCost]
    weight_bits: float
    peak_activation_bits: float
    outlier_bits: float

    @property
    def cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.spec.clock_mhz * 1e6)

    def energy_pj(self) -> dict[str, float]:
        return {c: sum(layer.energy_pj[c] for layer in self.layers) for c in COMPONENTS}

    @property
    def total_energy_pj(self) -> float:
        return sum(self.energy_pj().values())

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def summary(self) -> dict:
        """The totals that results.json / cost-<accelerator>.json report (units in the key names)."""
        energy = self.energy_pj()
        joules = self.total_energy_pj * 1e-12
        area = {c: float(a) for c, a in area_mm2(self.spec).items()}
        return {"accelerator": self.spec.name, "macs": self.macs,
                "macs_by_kind": {k: sum(l.macs for l in self.layers if l.kind == k) for k in ("dense", "shift", "twin")},
                "macs_by_precision": {p: sum(l.macs for l in self.layers if l.precision == p)
                                      for p in sorted({l.precision for l in self.layers if l.precision})},
                "memory_bytes": {"weights": self.weight_bits / 8, "peak_activations": self.peak_activation_bits / 8,
                                 "outliers": self.outlier_bits / 8},
                "sram_bytes": sum(l.sram_bits for l in self.layers) / 8,
                "sram_bytes_by_level": {level.name: sum((l.sram_bits_by_level or {}).get(level.name, 0.0)
                                                        for l in self.layers) / 8 for level in self.spec.sram},
                "dram_bytes": sum(l.dram_bits for l in self.layers) / 8,
                "energy_uj": {c: e * 1e-6 for c, e in energy.items()},
                "energy_per_inference_uj": self.total_energy_pj * 1e-6,
                "cycles": self.cycles, "latency_ms": self.latency_s * 1e3,
                "inferences_per_s": 1.0 / self.latency_s,
                "effective_tops_per_w": 2 * self.macs / joules / 1e12 if joules else None,
                "memory_bound_layers": sum(l.bound == "memory" for l in self.layers if l.kind != "vector"),
                "area_mm2": sum(area.values()), "area_mm2_by_component": area}

    def layer_rows(self) -> list[dict]:
        return [{**{k: v for k, v in asdict(l).items() if k != "energy_pj"}, "cycles": l.cycles,
                 "bound": l.bound, "energy_pj": l.energy_pj} for l in self.layers]

    def to_dict(self) -> dict:
        """The totals and the per-layer rows, as results.json and cost-<accelerator>.json hold them."""
        return {**self.summary(), "layers": self.layer_rows()}


def cost(load: Workload, spec: AcceleratorSpec) -> Cost:
    """Per-layer and total cost of one inference of `load` on `spec`."""
    weight_bits = float(sum(_weight_bits(g) for g in load.gemms if g.weights))
    resident = bool(_weights_resident(load, spec, spec.sram[0].size_kib))
    layers = [_gemm_cost(g, spec, resident) for g in load.gemms]
    layers += [_vector_cost(v, spec) for v in load.vector_ops]
    peak = max(g.groups * (g.m * g.k * g.a_bits + g.m * g.n * g.out_bits) for g in load.gemms)
    outliers = sum(_outlier_list_bits(g) for g in load.gemms if g.outliers)
    return Cost(spec, layers, weight_bits, float(peak), float(outliers))


def _outlier_list_bits(g: GemmOp) -> float:
    """Storage of a GEMM's PPOQ outliers in the simulator's CSR form (`kernels.outlier_rows`): a row pointer
    per token row (+1) and per outlier its int16 code and its column."""
    pointer_bits = _bits_for(g.m * g.k)
    return (g.m + 1) * pointer_bits + g.outliers * (OUTLIER_BITS + _bits_for(g.k - 1))


def _bits_for(value: int) -> int:
    """Bits of an unsigned field holding 0 .. value."""
    return max(1, int(value).bit_length())


def sweep(load: Workload, spec: AcceleratorSpec, *, rows: np.ndarray | int | None = None,
          cols: np.ndarray | int | None = None, sram_kib: np.ndarray | float | None = None,
          bandwidth_gb_s: np.ndarray | float | None = None) -> dict[str, np.ndarray]:
    """Totals of one inference for many variants of `spec` in one vectorised call.

    Each given axis is an array (all broadcast together): PE rows and columns, the size of the outermost
    SRAM level (KiB; the only level of every preset; its energy per bit follows its size) and the DRAM
    bandwidth; the rest comes from `spec`. Bit-widths are a workload property: sweep each (method, bits)
    workload. Returns cycles, latency, inferences/s, energy (total and by component), DRAM traffic (bits),
    effective TOPS/W and area (mm², total and by component) per variant; equal to `cost` variant by variant
    (tested).
    """
    rows = np.asarray(spec.pe_array.rows if rows is None else rows)
    cols = np.asarray(spec.pe_array.cols if cols is None else cols)
    outer_kib = np.asarray(spec.sram[0].size_kib if sram_kib is None else sram_kib, dtype=np.float64)
    bandwidth = np.asarray(spec.dram.bandwidth_gb_s if bandwidth_gb_s is None else bandwidth_gb_s, dtype=np.float64)
    resident = _weights_resident(load, spec, outer_kib)
    cycles, dram_bits = 0.0, 0.0
    by_component = dict.fromkeys(COMPONENTS, 0.0)
    for g in load.gemms:
        r = _gemm_arrays(g, spec, rows, cols, resident, outer_kib, bandwidth)
        cycles = cycles + np.maximum(r["compute"], r["memory"])
        dram_bits = dram_bits + r["dram_bits"]
        by_component = {c: by_component[c] + r["energy"][c] for c in COMPONENTS}
    for v in load.vector_ops:
        layer = _vector_cost(v, spec)
        cycles = cycles + layer.compute_cycles
        by_component = {c: by_component[c] + layer.energy_pj[c] for c in COMPONENTS}
    energy = sum(by_component.values())
    latency = cycles / (spec.clock_mhz * 1e6)
    shape = np.shape(cycles)  # every variant, also where area does not depend on an axis (bandwidth)
    area = {c: np.broadcast_to(a, shape) for c, a in area_mm2(spec, rows=rows, cols=cols, sram_kib=outer_kib).items()}
    return {"cycles": cycles, "latency_s": latency, "inferences_per_s": 1.0 / latency, "energy_pj": energy,
            "energy_pj_by_component": by_component, "dram_bits": dram_bits,
            "effective_tops_per_w": 2 * load.macs() / (energy * 1e-12) / 1e12,
            "area_mm2": sum(area.values()), "area_mm2_by_component": area}
