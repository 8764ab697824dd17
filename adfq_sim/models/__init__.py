"""Model sources: the embedded demo ViT and timm models with local checkpoints."""
