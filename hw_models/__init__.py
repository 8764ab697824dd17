"""Accelerator cost model: what one inference of an IntegerProgram costs on an accelerator.

`spec` (typed accelerator specs; `presets/` by name), `energy` (unit energies with their sources),
`workload` (the ops read off the program, so the simulator's ops are what gets priced), `dataflow`
(systolic-array cycles) and `cost` (per-layer cost, and `sweep` over many array variants at once).
"""
