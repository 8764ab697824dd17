"""The one rounding rule of the project: round half up, floor(x + 0.5).

The integer contract's requantization `(acc * m + 2**(s-1)) >> s` rounds half up, so the fake-quant
side must too (torch.round rounds half to even, which would disagree on exact ties).
"""

import torch


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round_half_up in the forward pass, identity gradient (straight-through) in the backward pass."""
    return x + (round_half_up(x) - x).detach()
