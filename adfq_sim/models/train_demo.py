"""The demo ViT's training recipe: deterministic, CPU-only, a few minutes on 2 cores.

Augmentation is a random shift of up to one pixel (the digits are tiny, so a shift is the natural
invariance); AdamW with a cosine schedule and label smoothing. Same seed, same machine -> same weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adfq_sim.data.demo import load_demo_split
from adfq_sim.models.demo import build_demo_vit
from adfq_sim.progress import bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoTrainRecipe:
    epochs: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    max_shift: int = 1
    drop_path_rate: float = 0.1
    seed: int = 0


def _random_shift(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to max_shift pixels, filling with the background value."""
    n, _, h, w = images.shape
    background = images.amin()
    padded = F.pad(images, [max_shift] * 4, value=float(background))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float((model(images).argmax(-1) == labels).float().mean())


def train_demo_vit(recipe: DemoTrainRecipe = DemoTrainRecipe()) -> tuple[torch.nn.Module, dict]:
    """Train the demo ViT from scratch; returns the model and its split accuracies."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = build_demo_vit(recipe.drop_path_rate)
    train_x, train_y = load_demo_split("train")
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / recipe.batch_size)
    total, warmup = recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    for _ in bar(range(recipe.epochs), "train demo ViT", recipe.epochs, unit="epoch"):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            x = _random_shift(train_x[idx], recipe.max_shift, gen)
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    accuracies = {split: top1(model, *load_demo_split(split)) for split in ("train", "calib", "test")}
    return model, accuracies


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Write the weights as safetensors (no pickle), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
