"""Integer-only execution of quantized ViTs (the integer contract of DESIGN.md): building blocks."""
