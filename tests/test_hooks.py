"""Observer hooks never outlive their pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adfq_sim.hooks import attached


def test_hooks_are_removed_after_the_pass_and_when_it_raises() -> None:
    layers = [nn.Linear(2, 2), nn.Linear(2, 2)]
    seen: list[int] = []
    with attached(layer.register_forward_hook(lambda *_, i=i: seen.append(i)) for i, layer in enumerate(layers)):
        for layer in layers:
            layer(torch.zeros(1, 2))
    assert seen == [0, 1] and not any(layer._forward_hooks for layer in layers)
    with pytest.raises(RuntimeError, match="boom"):
        with attached(layer.register_forward_hook(lambda *_: None) for layer in layers):
            raise RuntimeError("boom")
    assert not any(layer._forward_hooks for layer in layers)
