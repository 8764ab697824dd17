"""Accelerator cost model (issue 5, in progress): accelerator presets by name, and the workload of one
inference read off an IntegerProgram (`workload`); the spec, energy table and cost come next."""
