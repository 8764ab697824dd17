"""The `data:` section of the experiment config and its checks (no torch: loading a config stays cheap)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adfq_sim.errors import UserInputError
from adfq_sim.schema import check_choice

DATA_KINDS = ("demo", "imagefolder", "random")
DEFAULT_RANDOM_EVAL_IMAGES = 64


@dataclass(frozen=True)
class DataConfig:
    kind: str = "demo"
    root: Optional[str] = None
    calib_split: str = "train"
    eval_split: str = "val"
    calib_images: int = 128
    eval_images: Optional[int] = None
    batch_size: int = 64
    crop_pct: Optional[float] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


def check_data(d: DataConfig, model_name: str) -> None:
    """What the types cannot say: folders exist, values are in range, options fit the kind. The model's
    name is needed because the demo digits fit the demo model alone."""
    check_choice(d.kind, DATA_KINDS, "data.kind")
    if d.kind == "imagefolder":
        if d.root is None:
            raise UserInputError("data.root: required when data.kind is imagefolder")
        for key in ("calib_split", "eval_split"):
            folder = Path(d.root) / getattr(d, key)
            if not folder.is_dir():
                raise UserInputError(f"data.{key}: folder not found: {folder}")
        if d.crop_pct is not None and not 0.0 < d.crop_pct <= 1.0:
            raise UserInputError(f"data.crop_pct: must be in (0, 1], got {d.crop_pct}")
        for key in ("mean", "std"):
            values = getattr(d, key)
            if values is not None and (not values or (key == "std" and min(values) <= 0)):
                raise UserInputError(f"data.{key}: expected one value per channel{' (> 0)' if key == 'std' else ''}, got {values}")
    else:
        for key in ("root", "crop_pct", "mean", "std"):
            if getattr(d, key) is not None:
                raise UserInputError(f"data.{key}: only used with data.kind imagefolder (kind is {d.kind})")
    if d.kind == "demo" and model_name != "demo":
        raise UserInputError(f"data.kind: the demo data is 8x8 digits for the demo model; "
                             f"use imagefolder or random with {model_name!r}")
    for key in ("calib_images", "eval_images", "batch_size"):
        value = getattr(d, key)
        if value is not None and value < 1:
            raise UserInputError(f"data.{key}: must be >= 1, got {value}")
