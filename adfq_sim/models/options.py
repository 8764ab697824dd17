"""The `model:` section of the experiment config and its checks.

Kept apart from `loading` (torch, timm) so that loading a config stays cheap: timm is imported only to
check a timm model's name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from adfq_sim.errors import UserInputError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "demo"
    checkpoint: Optional[str] = None
    random_init: bool = False
    num_classes: Optional[int] = None
    kwargs: dict = field(default_factory=dict)


def check_model_name(name: str) -> None:
    """`demo` or a timm architecture name; a typo gets a did-you-mean."""
    if name == "demo":
        return
    import timm  # here, not at the top: a config for the demo model loads without torch

    if timm.is_model(name):
        return
    guess = difflib.get_close_matches(name, timm.list_models(), n=1, cutoff=0.7)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    raise UserInputError(f"model.name: {name!r} is neither 'demo' nor a timm model{hint}")


def input_channels(m: ModelConfig) -> Optional[int]:
    """The image channels the configured model will take, known before it is built (for checking
    `data.mean` / `data.std` with the rest of the config): `model.kwargs.in_chans`, else the demo's or the
    timm architecture's default; None where timm does not say. Call after check_model."""
    in_chans = m.kwargs.get("in_chans")
    if isinstance(in_chans, int) and not isinstance(in_chans, bool):
        return in_chans
    if m.name == "demo":
        from adfq_sim.models.demo import DEMO_ARCH  # imports torch: asked only when mean / std are set

        return int(DEMO_ARCH["in_chans"])
    import timm

    size = getattr(timm.get_pretrained_cfg(m.name), "input_size", None)
    return int(size[0]) if size else None


def check_model(m: ModelConfig) -> None:
    """What the types cannot say: the name is known, the checkpoint exists, weights have one source."""
    check_model_name(m.name)
    if m.checkpoint is not None:
        path = Path(m.checkpoint)
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise UserInputError(f"model.checkpoint: {m.checkpoint} must end in one of {', '.join(CHECKPOINT_SUFFIXES)}")
        if not path.is_file():
            raise UserInputError(f"model.checkpoint: file not found: {m.checkpoint}")
        if m.random_init:
            raise UserInputError("model.random_init: cannot be true together with model.checkpoint")
    elif m.name != "demo" and not m.random_init:
        raise UserInputError(
            f"model.checkpoint: required for timm model {m.name!r} (weights are never downloaded); "
            "or set model.random_init: true")
    if m.num_classes is not None and m.num_classes < 1:
        raise UserInputError(f"model.num_classes: must be >= 1, got {m.num_classes}")
    if m.name == "demo" and m.kwargs:
        raise UserInputError("model.kwargs: the demo model's architecture is fixed; kwargs apply to timm models")
