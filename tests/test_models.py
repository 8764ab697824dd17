"""Model sources: timm checkpoints in every supported form, class counts, and the demo checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adfq_sim.data.demo import load_demo_split
from adfq_sim.errors import UserInputError
from adfq_sim.models.demo import DEMO_ARCH, demo_checkpoint_path
from adfq_sim.models.loading import load_model
from adfq_sim.models.options import ModelConfig
from conftest import TINY_VIT_KWARGS, TINY_VIT_NAME, tiny_vit


def _save(model: torch.nn.Module, path: Path, form: str) -> Path:
    state = model.state_dict()
    if form == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif form == "wrapped":
        torch.save({"model": state, "epoch": 3}, path)
    elif form == "state_dict_key":
        torch.save({"state_dict": state}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("form, suffix", [("plain", ".pth"), ("wrapped", ".pt"), ("state_dict_key", ".pth"),
                                          ("safetensors", ".safetensors")])
def test_checkpoint_forms_load_the_same_weights(tmp_path: Path, form: str, suffix: str) -> None:
    original = tiny_vit(num_classes=5)
    path = _save(original, tmp_path / f"ckpt{suffix}", form)
    loaded = load_model(ModelConfig(name=TINY_VIT_NAME, checkpoint=str(path), kwargs=TINY_VIT_KWARGS))
    assert loaded.num_classes == 5  # read from the checkpoint, not the timm default of 1000
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))


def test_class_count_mismatch_between_config_and_checkpoint(tmp_path: Path) -> None:
    path = _save(tiny_vit(num_classes=3), tmp_path / "c.pth", "plain")
    cfg = ModelConfig(name=TINY_VIT_NAME, checkpoint=str(path), num_classes=4, kwargs=TINY_VIT_KWARGS)
    with pytest.raises(UserInputError, match=r"model\.num_classes: config says 4, checkpoint .* has 3"):
        load_model(cfg)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = _save(tiny_vit(), tmp_path / "c.pth", "plain")
    deeper = {**TINY_VIT_KWARGS, "depth": 3}
    with pytest.raises(UserInputError, match=r"model\.checkpoint: .*c\.pth does not fit .*missing"):
        load_model(ModelConfig(name=TINY_VIT_NAME, checkpoint=str(path), kwargs=deeper))
    wider = {**TINY_VIT_KWARGS, "embed_dim": 64}
    with pytest.raises(UserInputError, match=r"model\.checkpoint: .*has shape"):
        load_model(ModelConfig(name=TINY_VIT_NAME, checkpoint=str(path), kwargs=wider))


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match=r"model\.checkpoint: cannot read .*broken\.safetensors"):
        load_model(ModelConfig(name=TINY_VIT_NAME, checkpoint=str(path), kwargs=TINY_VIT_KWARGS))


def test_random_init_uses_config_class_count() -> None:
    loaded = load_model(ModelConfig(name=TINY_VIT_NAME, random_init=True, num_classes=7, kwargs=TINY_VIT_KWARGS))
    assert loaded.num_classes == 7 and loaded.source == "random_init"


def test_committed_demo_checkpoint_is_small_and_accurate() -> None:
    path = demo_checkpoint_path()
    assert path.is_file() and path.stat().st_size <= 5 * 2**20
    loaded = load_model(ModelConfig())
    assert loaded.num_classes == DEMO_ARCH["num_classes"]
    images, labels = load_demo_split("test")
    with torch.no_grad():
        accuracy = float((loaded.model(images).argmax(-1) == labels).float().mean())
    assert accuracy >= 0.97


def test_demo_splits_are_disjoint_and_fixed() -> None:
    from adfq_sim.data.demo import _split_indices

    splits = _split_indices()
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"test": 450, "calib": 200, "train": 1147}
    union = set().union(*(set(v.tolist()) for v in splits.values()))
    assert len(union) == 1797
    assert splits["test"][:5].tolist() == _split_indices()["test"][:5].tolist()
