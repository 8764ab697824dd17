"""The embedded demo ViT: a small timm VisionTransformer for the 8x8 digits, checkpoint shipped.

Architecture constants live here and only here; the checkpoint stores weights only.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import timm
import torch

DEMO_ARCH = dict(
    img_size=8,
    patch_size=2,
    in_chans=1,
    num_classes=10,
    embed_dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=4.0,
    qkv_bias=True,
    class_token=True,
    global_pool="token",
)
DEMO_CHECKPOINT_NAME = "demo_vit.safetensors"


def demo_checkpoint_path() -> Path:
    """Where the committed demo checkpoint lives inside the installed package."""
    return Path(str(resources.files("adfq_sim.models").joinpath("weights", DEMO_CHECKPOINT_NAME)))


def build_demo_vit(drop_path_rate: float = 0.0) -> torch.nn.Module:
    """The demo architecture with fresh (untrained) weights; drop-path only matters in training."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=drop_path_rate, **DEMO_ARCH)
