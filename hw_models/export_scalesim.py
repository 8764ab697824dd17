"""A priced workload in SCALE-Sim's GEMM inputs: a topology CSV and a .cfg of the spec's array.

SCALE-Sim (`pip install scalesim`; Samajdar et al., ISPASS 2020; Raj et al., ISPASS 2025 for v3) reads
GEMMs as `Layer, M, N, K,` rows, each ending with a comma: M the rows it streams (here a GEMM's tokens),
N the output columns (output features), K the inner dimension; it runs one GEMM per row, so a GEMM of
`groups` products (attention heads, Swin windows) becomes `groups` rows. What the format cannot say:
operand widths (SCALE-Sim moves words), MAC lanes packed per PE (K stays the true inner dimension),
the shift-add lanes for log-coded operands and PPOQ's outlier lanes (every GEMM runs on the array), and
one shared buffer (the spec's innermost SRAM level is split in three equal parts, whole kB: ifmap, filter,
ofmap).
"""

from __future__ import annotations

from hw_models.spec import AcceleratorSpec
from hw_models.workload import Workload

DATAFLOW_NAMES = {"output_stationary": "os", "weight_stationary": "ws"}
HEADER = "Layer, M, N, K,"


def topology_csv(load: Workload) -> str:
    lines = [HEADER] + [f"{name}, {g.m}, {g.n}, {g.k}," for name, g in load.products()]
    return "\n".join(lines) + "\n"


def config_cfg(spec: AcceleratorSpec, run_name: str) -> str:
    """The spec's array, buffer and dataflow in SCALE-Sim 3's .cfg (the [layout] and [sparsity] sections it
    requires at their dense defaults). Bandwidth is the spec's DRAM bandwidth in bytes per cycle, but the
    interface is CALC: SCALE-Sim then sizes it for no stalls, so its cycles are compute cycles, the
    figure the cross-check compares."""
    buffer_kib = max(1, int(spec.sram[-1].size_kib / 3))  # SCALE-Sim reads whole kB and words
    bytes_per_cycle = max(1, round(spec.dram.bandwidth_gb_s * 1e9 / (spec.clock_mhz * 1e6)))
    return f"""[general]
run_name = {run_name}

[architecture_presets]
ArrayHeight: {spec.pe_array.rows}
ArrayWidth: {spec.pe_array.cols}
IfmapSramSzkB: {buffer_kib}
FilterSramSzkB: {buffer_kib}
OfmapSramSzkB: {buffer_kib}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: {bytes_per_cycle}
Dataflow: {DATAFLOW_NAMES[spec.pe_array.dataflow]}
MemoryBanks: {spec.sram[-1].banks}
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def files(load: Workload, spec: AcceleratorSpec, name: str) -> dict[str, str]:
    """The topology, the config and the empty layout file SCALE-Sim 3 asks for (`-l`)."""
    return {"topology.csv": topology_csv(load), f"{spec.name}.cfg": config_cfg(spec, name),
            "layout.csv": "Layer name,\n"}
