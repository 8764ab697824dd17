"""The paper-protocol ImageNet configs: valid against the schema, and the protocol's transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import yaml

from adfq_sim.config import load_config
from adfq_sim.data.sources import eval_data_config
from conftest import write_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("imagenet_*.yaml"))
# The ADFQ-ViT protocol (docs/references.md, "ImageNet data protocol"): crop_pct 0.875 for DeiT,
# 0.9 for ViT and Swin; mean = std = 0.5 for ViT, ImageNet's otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
PROTOCOL = {"deit": (0.875, IMAGENET_MEAN), "vit": (0.9, (0.5, 0.5, 0.5)), "swin": (0.9, IMAGENET_MEAN)}


def test_there_is_a_config_per_family() -> None:
    assert {p.stem.split("_")[1] for p in CONFIGS} == set(PROTOCOL)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_is_valid_with_local_paths(tmp_path: Path, path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"")
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).mkdir(parents=True)
    raw["model"]["checkpoint"] = str(checkpoint)
    raw["data"]["root"] = str(tmp_path / "imagenet")
    cfg = load_config(write_config(tmp_path / path.name, raw))
    assert cfg.data.calib_split == "train" and cfg.data.eval_split == "val" and cfg.data.eval_images is None
    assert cfg.quant.adfq.profile == "paper" and cfg.quant.adfq.asmo_setting("asmo_images") == cfg.data.calib_images
    model = timm.create_model(cfg.model.name, pretrained=False)
    data_cfg = eval_data_config(model, cfg.data)
    crop_pct, mean = PROTOCOL[path.stem.split("_")[1]]
    assert data_cfg["input_size"] == (3, 224, 224)
    assert data_cfg["crop_pct"] == pytest.approx(crop_pct)
    assert tuple(data_cfg["mean"]) == pytest.approx(mean)
