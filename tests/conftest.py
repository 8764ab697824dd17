"""Shared fixtures: tiny timm models, checkpoints saved every supported way, small image folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

TINY_VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_VIT_NAME = "vit_tiny_patch16_224"


def tiny_vit(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(TINY_VIT_NAME, pretrained=False, num_classes=num_classes, **TINY_VIT_KWARGS).eval()


def demo_calibration(calib_images: int, images: int) -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """The demo ViT, its first calibration images as one batch, and its first test images."""
    from adfq_sim.data.demo import load_demo_split
    from adfq_sim.models.loading import load_model
    from adfq_sim.models.options import ModelConfig

    calib, _ = load_demo_split("calib")
    test, _ = load_demo_split("test")
    return load_model(ModelConfig()).model, [calib[:calib_images]], test[:images]


def random_init_workloads(model_name: str, configs: list[tuple[str, int]],
                          outliers: dict[str, float] | None = None) -> dict:
    """(method, bits) -> the cost model's workload of a random-init timm model (seed 0), quantized on two
    random images (ADFQ without ASMO: the workload is what is tested, not the accuracy)."""
    from adfq_sim.intsim.export import export
    from adfq_sim.quant.calibrate import quantize_model
    from adfq_sim.quant.methods import build_recipe
    from adfq_sim.quant.options import QuantConfig
    from hw_models.workload import workload

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).eval()
    calib = [torch.randn(2, 3, 224, 224)]
    quant = QuantConfig(adfq=dataclasses.replace(QuantConfig().adfq, asmo=False))
    return {(method, bits): workload(export(quantize_model(model, build_recipe(method, quant), bits, bits, calib),
                                            calib), outliers)
            for method, bits in configs}


def calibrated(quantizer, *batches: torch.Tensor):
    """The quantizer after observing `batches` and freezing its parameters."""
    quantizer.begin_calibration()
    for batch in batches:
        quantizer(batch)
    quantizer.end_calibration()
    return quantizer


def strip_timings(value):
    """results.json without its `timings` keys (wall seconds, the only part allowed to differ)."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if k != "timings"}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def write_image_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """root/<split>/<class>/*.{png,jpg}: PNG and JPEG mixed, sizes not equal to the model's."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                pixels[..., c % 3] = np.clip(pixels[..., c % 3].astype(int) + 80, 0, 255)
                suffix = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(folder / f"img_{i}.{suffix}")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = tiny_vit()
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_image_folder(root, classes=3, per_class=4)
    return root
