"""Integer-only execution of quantized ViTs: a calibrated model exported to an IntegerProgram (an op
graph over named tensors; `program`, `ops`), run by three executors that must agree code for code
(`execute_reference`, `execute`, `faithful`) and compared tensor by tensor (`verify`)."""
