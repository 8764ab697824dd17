"""Data sources: the bundled demo digits, an ImageNet-style folder, or random tensors.

Each source yields a calibration set and an evaluation set as batches of (images, labels-or-None).
Subsets are chosen by a seeded permutation, so the same config and seed pick the same images, and a
class-sorted folder still gives a class-balanced subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from adfq_sim.data.demo import load_demo_split
from adfq_sim.data.options import DEFAULT_RANDOM_EVAL_IMAGES, DataConfig, check_channel_values
from adfq_sim.errors import UserInputError

Batch = tuple[torch.Tensor, Optional[torch.Tensor]]


@dataclass
class DataSource:
    calib: Dataset
    eval: Dataset
    has_labels: bool
    description: dict

    def batches(self, which: str, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[Batch]:
        """Batches of images `start` to `stop` in a fixed order (no shuffling: results must not depend on
        the run); an evaluation shard reads its own range."""
        dataset = self.calib if which == "calib" else self.eval
        if start != 0 or stop is not None:
            dataset = Subset(dataset, range(start, len(dataset) if stop is None else stop))
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            yield (batch[0], batch[1]) if self.has_labels else (batch[0], None)


def _seeded_subset(dataset: Dataset, count: Optional[int], seed: int, what: str) -> Dataset:
    total = len(dataset)
    if count is None:
        return dataset
    if count > total:
        raise UserInputError(f"data.{what}: asks for {count} images, the split has only {total}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    return Subset(dataset, sorted(order.tolist()))


def model_input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the model was built for (timm's default_cfg may say 224 regardless)."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    proj = getattr(embed, "proj", None)
    if size is None or proj is None:
        return tuple(model.pretrained_cfg["input_size"])
    return (int(proj.in_channels), int(size[0]), int(size[1]))


def eval_data_config(model: torch.nn.Module, cfg: DataConfig) -> dict:
    """timm's eval data config for the model (crop_pct / mean / std overridable from the config). The
    config's mean / std are checked against the built model's channels first: timm only asserts."""
    from timm.data import resolve_data_config

    input_size = model_input_size(model)
    overrides = {key: getattr(cfg, key) for key in ("crop_pct", "mean", "std") if getattr(cfg, key) is not None}
    for key in ("mean", "std"):
        if key in overrides:
            check_channel_values(key, overrides[key], input_size[0])
    return resolve_data_config({"input_size": input_size, **overrides}, model=model)


def read_rgb_image(path: str) -> Image.Image:
    """The image at `path` in RGB, as torchvision's default `pil_loader` reads it; a file that cannot be
    opened or decoded is a UserInputError naming it.

    ImageFolder lists files by extension alone, so a broken `.JPEG` is met only when a batch reads it,
    mid-evaluation. Everything inside the `try` is PIL reading the user's file, and PIL fails in many
    ways (OSError, SyntaxError, ValueError, struct.error, DecompressionBombError...), so any exception
    there is taken as the file's fault. A module-level function, so that datasets pickle (Ray workers)."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:  # its message ends in the file object's repr
        reason = "cannot identify image file"
    except Exception as exc:  # noqa: BLE001 (see the docstring)
        reason = " ".join(str(exc).split()) or type(exc).__name__
    raise UserInputError(f"{path}: not a readable image ({reason})")


def _image_folder(root: Path, model: torch.nn.Module, cfg: DataConfig) -> tuple[Dataset, dict]:
    """An ImageFolder with the model's own eval transform, whose unreadable files are user errors."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    data_cfg = eval_data_config(model, cfg)
    try:
        dataset = ImageFolder(str(root), transform=create_transform(**data_cfg), loader=read_rgb_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserInputError(f"data.root: {root}: {exc}") from None
    return dataset, {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()}


def build_data_source(cfg: DataConfig, model: torch.nn.Module, num_classes: int, seed: int) -> DataSource:
    """The configured data, checked against the model's class count and input size."""
    if cfg.kind == "demo":
        calib, evals = TensorDataset(*load_demo_split("calib")), TensorDataset(*load_demo_split("test"))
        has_labels, info = True, {"dataset": "sklearn digits 8x8", "calib_split": "calib", "eval_split": "test"}
    elif cfg.kind == "imagefolder":
        root = Path(cfg.root)
        calib, transform = _image_folder(root / cfg.calib_split, model, cfg)
        evals, _ = _image_folder(root / cfg.eval_split, model, cfg)
        for split, dataset in ((cfg.calib_split, calib), (cfg.eval_split, evals)):
            if len(dataset.classes) != num_classes:
                raise UserInputError(f"data.root: {root / split} has {len(dataset.classes)} class folders, "
                                     f"the model has {num_classes} classes")
        if calib.classes != evals.classes:
            raise UserInputError(f"data.root: class folders of {cfg.calib_split} and {cfg.eval_split} differ")
        has_labels, info = True, {"root": str(root), "transform": transform}
    else:
        shape = model_input_size(model)
        gen = torch.Generator().manual_seed(seed)
        n_eval = cfg.eval_images or DEFAULT_RANDOM_EVAL_IMAGES
        calib = TensorDataset(torch.randn((cfg.calib_images, *shape), generator=gen))
        evals = TensorDataset(torch.randn((n_eval, *shape), generator=gen))
        has_labels, info = False, {"dataset": "standard normal tensors", "shape": list(shape)}
    calib = _seeded_subset(calib, cfg.calib_images, seed, "calib_images")
    evals = _seeded_subset(evals, cfg.eval_images, seed + 1, "eval_images")
    info.update(kind=cfg.kind, calib_images=len(calib), eval_images=len(evals))
    return DataSource(calib, evals, has_labels, info)
