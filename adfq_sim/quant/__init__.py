"""Fake-quant side: quantizers, quantized modules, recipes (methods as data), QuantModel."""
