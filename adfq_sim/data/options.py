"""The `data:` section of the experiment config and its checks (no torch: loading a config stays cheap)."""

from __future__ import annotations

import math
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


def check_channel_values(key: str, values: list[float], channels: Optional[int]) -> None:
    """`data.mean` or `data.std` (`key`): finite numbers (std > 0), one per channel of the model or a single
    one that timm repeats for every channel; `channels` None: the count is not checked.

    timm's resolve_data_config checks the count with a bare `assert`, which the user would meet as a
    traceback; so this runs before it, and earlier still, from check_data, where the count is known."""
    where = f"data.{key}"
    if not values:
        raise UserInputError(f"{where}: expected one value per channel, got []")
    if not all(math.isfinite(v) for v in values):
        raise UserInputError(f"{where}: values must be finite numbers, got {values}")
    if key == "std" and min(values) <= 0:
        raise UserInputError(f"{where}: values must be > 0, got {values}")
    if channels is not None and len(values) not in (1, channels):
        raise UserInputError(f"{where}: {len(values)} values for a {channels}-channel model "
                             f"(give {channels}, or 1 for every channel), got {values}")


def check_data(d: DataConfig, model_name: str, channels: Optional[int] = None) -> None:
    """What the types cannot say: folders exist, values are in range, options fit the kind. The model's
    name is needed because the demo digits fit the demo model alone; its input `channels`, where known,
    because `mean` and `std` give one value per channel."""
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
            if getattr(d, key) is not None:
                check_channel_values(key, getattr(d, key), channels)
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
