"""Model source: the embedded demo ViT, or any timm model by name with a local checkpoint.

Weights are never downloaded: a timm model needs `checkpoint` (a .pth/.pt state dict, possibly wrapped
in a `model` / `state_dict` key, or a .safetensors file) or `random_init: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import get_pretrained_cfg_value, load_state_dict

from adfq_sim.errors import UserInputError
from adfq_sim.models.demo import DEMO_ARCH, build_demo_vit, demo_checkpoint_path
from adfq_sim.models.options import ModelConfig


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    num_classes: int
    source: str  # "demo", "checkpoint" or "random_init"
    checkpoint: str | None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:  # corrupt file, pickle refused, wrong format: all the user's to fix
        raise UserInputError(f"model.checkpoint: cannot read {path}: {type(exc).__name__}: {exc}") from None


def _classifier_rows(name: str, state: dict[str, torch.Tensor], path: Path) -> int | None:
    """The class count stored in a checkpoint's classifier weight, if it has one."""
    classifier = get_pretrained_cfg_value(name, "classifier") or "head"
    weight = state.get(f"{classifier}.weight")
    if weight is None:
        return None
    if weight.ndim != 2:
        raise UserInputError(f"model.checkpoint: {path}: {classifier}.weight has shape {tuple(weight.shape)}")
    return int(weight.shape[0])


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        raise UserInputError(f"model.checkpoint: {path} does not fit {arch}: {'; '.join(parts)}")
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise UserInputError(
                f"model.checkpoint: {path}: {key} has shape {tuple(tensor.shape)}, "
                f"{arch} expects {tuple(own[key].shape)} (check model.kwargs)")
    model.load_state_dict(state)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build the configured model in eval mode, weights from the checkpoint, the demo or random init."""
    if cfg.name == "demo":
        if cfg.num_classes not in (None, DEMO_ARCH["num_classes"]):
            raise UserInputError(f"model.num_classes: the demo model has {DEMO_ARCH['num_classes']} classes, "
                                 f"config says {cfg.num_classes}")
        if cfg.random_init:
            return LoadedModel(build_demo_vit().eval(), DEMO_ARCH["num_classes"], "random_init", None)
        path = Path(cfg.checkpoint) if cfg.checkpoint else demo_checkpoint_path()
        state = _read_state_dict(path)
        model = build_demo_vit()
        _load_strict(model, state, path, "the demo ViT")
        return LoadedModel(model.eval(), DEMO_ARCH["num_classes"], "demo", str(path))

    kwargs = dict(cfg.kwargs)
    if cfg.checkpoint is None:
        num_classes = cfg.num_classes
        state = None
    else:
        path = Path(cfg.checkpoint)
        state = _read_state_dict(path)
        stored = _classifier_rows(cfg.name, state, path)
        if cfg.num_classes is not None and stored is not None and stored != cfg.num_classes:
            raise UserInputError(f"model.num_classes: config says {cfg.num_classes}, "
                                 f"checkpoint {path} has {stored} classes")
        num_classes = cfg.num_classes if cfg.num_classes is not None else stored
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise UserInputError(f"model.kwargs: {cfg.name} does not accept {kwargs}: {exc}") from None
    if state is not None:
        _load_strict(model, state, Path(cfg.checkpoint), cfg.name)
    source = "random_init" if state is None else "checkpoint"
    return LoadedModel(model.eval(), int(model.num_classes), source, cfg.checkpoint)
