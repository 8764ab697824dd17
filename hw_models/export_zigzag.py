"""A priced workload in ZigZag's inputs (`pip install zigzag-dse`): a workload YAML and a hardware YAML.

Workload: one `Gemm` layer per product the array runs (a grouped GEMM, attention heads or Swin windows,
as one layer per group: their right operands differ), `O[b][k]+=I[b][c]*W[c][k]` with B the tokens (M),
C the inner dimension (K) and K the output features (N), and each layer's `operand_precision` from the
IntegerProgram: W the right operand's code width, I the left's, O the accumulator (partial sums), O_final
the width the layer stores. Layers are independent (`operand_source` is the layer itself). Hardware: the
PE array as a D1 x D2 operational array at the widest MAC kind's energy, the spec's PE register files
(one per operand, in every PE), its SRAM levels (each serving all three operands, one read-write port per
operand) and DRAM, and a mapping file with the
spec's dataflow as the spatial mapping, with per-access costs of the cost
model (`cost.level_pj_per_bit` times the port width). ZigZag has no packed MAC lanes, no shift-add lanes
for log-coded operands and no PPOQ outlier lanes: every layer is a dense integer GEMM there.
"""

from __future__ import annotations

from adfq_sim.formats import ACCUMULATOR_BITS
from hw_models.cost import level_pj_per_bit, mac_pj, register_pj_per_bit
from hw_models.spec import AcceleratorSpec
from hw_models.workload import Workload

DRAM_BITS = 1 << 40  # ZigZag needs a size for the off-chip level: large enough for any workload
DRAM_PORT_BITS = 64


def workload_yaml(load: Workload) -> str:
    layers = []
    for index, (name, g) in enumerate(load.products()):
        layers.append(f"""- id: {index}
  name: {name}
  operator_type: Gemm
  equation: O[b][k]+=I[b][c]*W[c][k]
  dimension_relations: []
  loop_dims: [B, C, K]
  loop_sizes: [{g.m}, {g.k}, {g.n}]
  operand_precision: {{W: {g.b_bits}, I: {g.a_bits}, O: {ACCUMULATOR_BITS}, O_final: {g.out_bits}}}
  operand_source: {{I: {index}, W: {index}}}""")
    return "\n".join(layers) + "\n"


def _memory(name: str, size_bits: int, port_bits: int, pj_per_bit: float, top: bool) -> str:
    """A level serving all three operands over the whole array, one read-write port per operand (ZigZag
    3.x's port syntax) carrying its traffic to and from the level below (and above, but for the top
    level), costed per access of the port's width."""
    cost = pj_per_bit * port_bits
    above = [] if top else ["fh"]
    allocations = ([f"I1, {d}" for d in ["tl", *above]], [f"I2, {d}" for d in ["tl", *above]],
                   [f"O, {d}" for d in ["tl", "fl", *([] if top else ["th", "fh"])]])
    ports = []
    for index, allocation in enumerate(allocations, start=1):
        ports.append(f"""      - name: rw_port_{index}
        type: read_write
        bandwidth_min: {port_bits}
        bandwidth_max: {port_bits}
        allocation:
""" + "\n".join(f"          - {a}" for a in allocation))
    return f"""  {name}:
    size: {size_bits}
    r_cost: {cost:.6g}
    w_cost: {cost:.6g}
    area: 0
    latency: 1
    auto_cost_extraction: False
    operands: [I1, I2, O]
    ports:
""" + "\n".join(ports) + """
    served_dimensions: [D1, D2]"""


REGISTER_OPERANDS = {"inputs": "I1", "weights": "I2", "outputs": "O"}  # a register file's operand -> ZigZag's


def _register_file(operand: str, entries: int, bits: int, pj_per_bit: float) -> str:
    """A PE's register file for one operand (ZigZag: served_dimensions [], one per PE), a read and a write
    port of one word, costed per word; the output one also passes partial sums up and down."""
    name = REGISTER_OPERANDS[operand]
    reads, writes = (["tl", "th"], ["fh", "fl"]) if name == "O" else (["tl"], ["fh"])
    ports = []
    for kind, allocation in (("read", reads), ("write", writes)):
        ports.append(f"""      - name: {kind[0]}_port_1
        type: {kind}
        bandwidth_min: {bits}
        bandwidth_max: {bits}
        allocation:
""" + "\n".join(f"          - {name}, {d}" for d in allocation))
    return f"""  {operand}_rf:
    size: {entries * bits}
    r_cost: {pj_per_bit * bits:.6g}
    w_cost: {pj_per_bit * bits:.6g}
    area: 0
    latency: 1
    auto_cost_extraction: False
    operands: [{name}]
    ports:
""" + "\n".join(ports) + """
    served_dimensions: []"""


def hardware_yaml(spec: AcceleratorSpec) -> str:
    widest = spec.widest_mac
    memories = [_register_file(operand, spec.pe_array.registers[operand], bits, register_pj_per_bit(spec))
                for operand, bits in spec.register_bits.items()]
    memories += [_memory(level.name, int(level.size_kib * 1024 * 8), level.width_bits * level.banks,
                         float(level_pj_per_bit(spec, level)), False) for level in reversed(spec.sram)]
    memories.append(_memory("dram", DRAM_BITS, DRAM_PORT_BITS, spec.dram.pj_per_bit, True))
    body = "\n\n".join(memories)
    return f"""name: {spec.name}

memories:
{body}

operational_array:
  input_precision: [{widest.a_bits}, {widest.w_bits}]
  unit_energy: {mac_pj(spec, widest.a_bits, widest.w_bits):.6g}
  unit_area: 1
  dimensions: [D1, D2]
  sizes: [{spec.pe_array.rows}, {spec.pe_array.cols}]
"""


def mapping_yaml(spec: AcceleratorSpec) -> str:
    """The spec's dataflow as ZigZag's spatial mapping of a Gemm: output-stationary puts tokens (B) on the
    array's rows and output features (K) on its columns, weight-stationary the inner dimension (C) on
    the rows; ZigZag searches the temporal mapping itself."""
    rows = "B" if spec.pe_array.dataflow == "output_stationary" else "C"
    return f"""- name: default
  spatial_mapping:
    D1:
      - {rows}, {spec.pe_array.rows}
    D2:
      - K, {spec.pe_array.cols}
  memory_operand_links:
    O: O
    W: I2
    I: I1
"""


def files(load: Workload, spec: AcceleratorSpec, name: str) -> dict[str, str]:
    return {"workload.yaml": workload_yaml(load), f"{spec.name}.yaml": hardware_yaml(spec),
            f"{spec.name}-mapping.yaml": mapping_yaml(spec)}
