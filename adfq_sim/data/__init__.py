"""Data sources: bundled demo digits, ImageNet-style folders, random tensors."""
