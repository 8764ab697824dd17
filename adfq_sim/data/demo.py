"""The bundled demo dataset: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

It ships inside an installed package, so the whole pipeline runs offline. The split is fixed by a
seeded permutation so that training, calibration and evaluation never share an image:

    test  : 450 images  (evaluation)
    calib : 200 images  (post-training quantization calibration)
    train : the other 1,147 images (training the demo ViT only)
"""

from __future__ import annotations

import numpy as np
import torch

SPLIT_SEED = 20240702
TEST_SIZE = 450
CALIB_SIZE = 200
SPLITS = ("train", "calib", "test")
# Pixel values 0..16 are scaled to [0, 1], then normalised with mean = std = 0.5 (the ViT convention).
PIXEL_MAX = 16.0
MEAN = (0.5,)
STD = (0.5,)


def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return {
        "test": np.sort(order[:TEST_SIZE]),
        "calib": np.sort(order[TEST_SIZE:TEST_SIZE + CALIB_SIZE]),
        "train": np.sort(order[TEST_SIZE + CALIB_SIZE:]),
    }


def load_demo_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return normalised images [N, 1, 8, 8] (float32) and labels [N] (int64) of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}; expected one of {SPLITS}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = _split_indices()[split]
    images = torch.from_numpy(digits.images[idx].astype(np.float32) / PIXEL_MAX).unsqueeze(1)
    images = (images - MEAN[0]) / STD[0]
    labels = torch.from_numpy(digits.target[idx].astype(np.int64))
    return images, labels
