"""adfq-sim: ADFQ-ViT post-training quantization, integer-only ViT simulation, accelerator cost model."""

__version__ = "0.1.0"
