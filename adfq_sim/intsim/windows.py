"""Swin's token reorderings as row index tables (for `ops.Gather`), computed once at export.

Rows of an image are its H x W tokens in row-major order. A table holds, per output row, the input
rows it is made of (-1: a row of zeros), so the executors only gather: no executor restates timm's
roll / pad / window_partition / window_reverse / patch-merging reshapes.
"""

from __future__ import annotations

import numpy as np


def window_partition(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(partition [windows * wh * ww, 1], reverse [height * width, 1]) of a (shifted) window attention.

    timm rolls the image by -shift, pads it at the bottom / right to whole windows (zeros) and cuts it
    into windows, row-major, each row-major: window row (y, x) of the padded, rolled image holds image
    row ((y + sh) % H, (x + sw) % W), or padding. `reverse` undoes it (window reverse, crop, roll back):
    image row r comes from the window row that holds r.
    """
    (wh, ww), (sh, sw) = window, shift
    padded_h, padded_w = -(-height // wh) * wh, -(-width // ww) * ww
    y, x = np.meshgrid(np.arange(padded_h), np.arange(padded_w), indexing="ij")
    source = np.where((y < height) & (x < width), ((y + sh) % height) * width + (x + sw) % width, -1)
    partition = source.reshape(padded_h // wh, wh, padded_w // ww, ww).transpose(0, 2, 1, 3).reshape(-1)
    reverse = np.empty(height * width, np.int64)
    live = partition >= 0
    reverse[partition[live]] = np.flatnonzero(live)
    return partition[:, None].astype(np.int64), reverse[:, None]


def patch_merging(height: int, width: int) -> np.ndarray:
    """[ceil(H/2) * ceil(W/2), 4]: the 2x2 neighbours each merged row concatenates, in timm's channel
    order (dw, dh): group dw * 2 + dh is image row (2i + dh, 2j + dw), -1 past an odd edge (zero padding)."""
    out_h, out_w = -(-height // 2), -(-width // 2)
    i, j = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    groups = []
    for dw in (0, 1):
        for dh in (0, 1):
            y, x = 2 * i + dh, 2 * j + dw
            groups.append(np.where((y < height) & (x < width), y * width + x, -1).reshape(-1))
    return np.stack(groups, axis=1).astype(np.int64)
