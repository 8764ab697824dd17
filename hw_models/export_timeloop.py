"""A priced workload in Timeloop v0.4's inputs: one problem YAML per GEMM shape and an architecture YAML.

A problem is Timeloop's MatrixMultiply shape (dimensions M, N, K; data spaces A [M, K], B [N, K] and the
read-write Z [M, N]) with the GEMM's instance sizes; `layers.yaml` lists which layer uses which problem
and how many times per image (its groups: attention heads, Swin windows), with the operand widths the
IntegerProgram gives, because a v0.4 problem has no per-operand precision (one `datawidth` per storage
level of the architecture). The architecture (`arch-<accelerator>.yaml`) is DRAM, the spec's SRAM levels (`smartbuffer_SRAM`,
outermost first) and a meshX x meshY container of PEs: the spec's register files (`regfile`, each keeping
its own data space: inputs A, weights B, outputs Z) and an `intmac` at the widest MAC kind; Timeloop
cannot express the spec's packed MAC lanes, its shift-add lanes or PPOQ's outlier lanes.
"""

from __future__ import annotations

from hw_models.spec import AcceleratorSpec
from hw_models.workload import Workload

DATAWIDTH = 8  # bits per word the architecture's storage levels hold (v0.4: one width per level)
REGISTER_DATA_SPACES = {"inputs": "A", "weights": "B", "outputs": "Z"}  # a register file's operand -> data space


def problem_name(m: int, n: int, k: int) -> str:
    return f"gemm_m{m}_n{n}_k{k}"


def problem_yaml(m: int, n: int, k: int) -> str:
    return f"""problem:
  version: 0.4
  shape:
    name: MatrixMultiply
    dimensions: [M, N, K]
    data_spaces:
    - name: A
      projection: [[[M]], [[K]]]
    - name: B
      projection: [[[N]], [[K]]]
    - name: Z
      projection: [[[M]], [[N]]]
      read_write: true
  instance:
    M: {m}
    N: {n}
    K: {k}
"""


def layers_yaml(load: Workload) -> str:
    lines = ["layers:"]
    for g in load.gemms:
        lines += [f"- name: {g.name}", f"  problem: problems/{problem_name(g.m, g.n, g.k)}.yaml",
                  f"  times_per_image: {g.groups}", f"  kind: {g.kind}",
                  f"  operand_bits: {{A: {g.a_bits}, B: {g.b_bits}, Z: {g.out_bits}}}"]
    return "\n".join(lines) + "\n"


def _register_file(operand: str, entries: int, bits: int) -> str:
    """A PE's register file for one operand, keeping its data space and bypassing the others."""
    space = REGISTER_DATA_SPACES[operand]
    others = ", ".join(d for d in REGISTER_DATA_SPACES.values() if d != space)
    return f"""
  - !Component
    name: {operand}_rf
    class: regfile
    attributes: {{depth: {entries}, width: {bits}, datawidth: {bits}}}
    constraints:
      dataspace: {{keep: [{space}], bypass: [{others}]}}"""


def architecture_yaml(spec: AcceleratorSpec) -> str:
    widest = spec.widest_mac
    levels = []
    for level in spec.sram:
        depth = int(level.size_kib * 1024 * 8 // level.width_bits)
        levels.append(f"""  - !Component
    name: {level.name}
    class: smartbuffer_SRAM
    attributes: {{depth: {depth}, width: {level.width_bits}, n_banks: {level.banks}, datawidth: {DATAWIDTH}}}""")
    sram = "\n".join(levels)
    registers = "".join(_register_file(operand, spec.pe_array.registers[operand], bits)
                        for operand, bits in spec.register_bits.items())
    return f"""architecture:
  version: 0.4
  nodes:
  - !Container
    name: system
    attributes: {{technology: "{spec.technology_nm:g}nm", global_cycle_seconds: {1 / (spec.clock_mhz * 1e6):.6g}}}
  - !Component
    name: DRAM
    class: DRAM
    attributes: {{type: LPDDR4, width: 64, datawidth: {DATAWIDTH}}}
  - !Container
    name: {spec.name}
{sram}
  - !Container
    name: PE
    spatial: {{meshX: {spec.pe_array.cols}, meshY: {spec.pe_array.rows}}}{registers}
  - !Component
    name: mac
    class: intmac
    attributes: {{multiplier_width: {max(widest.a_bits, widest.w_bits)}, adder_width: {spec.accumulator_bits}}}
"""


def files(load: Workload, spec: AcceleratorSpec, name: str) -> dict[str, str]:
    """Every distinct GEMM shape's problem, the layer list and the architecture."""
    out = {f"problems/{problem_name(g.m, g.n, g.k)}.yaml": problem_yaml(g.m, g.n, g.k) for g in load.gemms}
    out["layers.yaml"] = layers_yaml(load)
    out[f"arch-{spec.name}.yaml"] = architecture_yaml(spec)
    return out
