"""Data sources: an image folder's unreadable files and its normalisation are user errors naming them."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfq_sim.data.options import DataConfig
from adfq_sim.data.sources import build_data_source, eval_data_config, read_rgb_image
from adfq_sim.errors import UserInputError
from conftest import tiny_vit, write_image_folder


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()[:300]


@pytest.mark.parametrize("content, reason", [(b"not an image", "cannot identify image file"),
                                             (_truncated_jpeg(), "")], ids=["not-an-image", "truncated-jpeg"])
def test_unreadable_image_in_the_folder_names_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    write_image_folder(tmp_path, classes=2, per_class=2)
    broken = tmp_path / "val" / "class_0" / "broken.JPEG"
    broken.write_bytes(content)
    source = build_data_source(DataConfig(kind="imagefolder", root=str(tmp_path), calib_images=2, batch_size=2),
                               tiny_vit(num_classes=2), num_classes=2, seed=0)
    assert len(list(source.batches("calib", 2))) == 1  # the other split reads as before
    with pytest.raises(UserInputError) as info:
        list(source.batches("eval", 2))
    message = str(info.value)
    assert message.startswith(f"{broken}: not a readable image (") and reason in message and "\n" not in message


def test_image_folder_loader_converts_to_rgb_and_pickles(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, per_class=1)
    gray = tmp_path / "val" / "class_1" / "gray.png"
    Image.fromarray(np.full((40, 48), 7, dtype=np.uint8)).save(gray)
    image = read_rgb_image(str(gray))
    assert image.mode == "RGB" and image.size == (48, 40) and image.getpixel((0, 0)) == (7, 7, 7)
    source = build_data_source(DataConfig(kind="imagefolder", root=str(tmp_path), calib_images=2), tiny_vit(num_classes=2),
                               num_classes=2, seed=0)
    copy = pickle.loads(pickle.dumps(source.eval))  # datasets travel to Ray workers
    assert copy.loader is read_rgb_image and copy.samples[1][0] == str(gray)
    assert copy[1][0].shape == (3, 32, 32) and copy[1][1] == 1


def test_eval_data_config_checks_mean_and_std_against_the_built_model() -> None:
    """The last guard (config validation catches this first): timm itself would only `assert`."""
    model = tiny_vit()
    with pytest.raises(UserInputError, match=r"^data\.mean: 2 values for a 3-channel model"):
        eval_data_config(model, DataConfig(kind="imagefolder", mean=[0.5, 0.5]))
    with pytest.raises(UserInputError, match=r"^data\.std: values must be > 0"):
        eval_data_config(model, DataConfig(kind="imagefolder", std=[0.0]))
    data_cfg = eval_data_config(model, DataConfig(kind="imagefolder", mean=[0.5], std=[0.1, 0.2, 0.3]))
    assert data_cfg["mean"] == (0.5, 0.5, 0.5) and data_cfg["std"] == (0.1, 0.2, 0.3)
