"""The `quant:` section of the experiment config: which methods at which bit-widths, each method's
options, and their checks.

Every method's options sit here, in one module without torch, so that loading a config stays cheap
(the method modules need torch) and the method names the config accepts are listed once;
`adfq_sim.quant.methods` maps each name to its recipe builder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from adfq_sim.errors import UserInputError
from adfq_sim.formats import LOG_BASES
from adfq_sim.schema import check_choice

# Every method, in the order an unknown method's error lists them.
METHOD_NAMES = ("minmax", "percentile", "adfq", "repq", "ptq4vit")
BITS_PATTERN = re.compile(r"^w([2-8])a([2-8])$")


@dataclass(frozen=True)
class PercentileConfig:
    percentile: float = 99.99


@dataclass(frozen=True)
class Ptq4vitConfig:
    """PTQ4ViT's Hessian-guided search: scale candidates alpha..beta times the max-based scale."""
    candidates: int = 100
    rounds: int = 3
    alpha: float = 0.01
    beta: float = 1.2
    hessian: bool = True
    images: Optional[int] = 32


# ASMO settings per profile; explicit quant.adfq.asmo_* keys override them. `paper` is the reference
# implementation's protocol (1024 images, batch 32, 3000 iterations per module, Adam lr 3e-3 for the
# rounding and 4e-5 for the steps); `fast` keeps the demo run short, with larger learning rates so
# that 200 iterations still converge.
ASMO_PROFILES = {
    "fast": {"asmo_iters": 200, "asmo_images": 128, "asmo_batch_size": 32,
             "asmo_lr_weight": 1e-2, "asmo_lr_act": 1e-3},
    "paper": {"asmo_iters": 3000, "asmo_images": 1024, "asmo_batch_size": 32,
              "asmo_lr_weight": 3e-3, "asmo_lr_act": 4e-5},
}


@dataclass(frozen=True)
class AdfqConfig:
    ppoq: bool = True
    slq: bool = True
    asmo: bool = True
    alpha_qkv: float = 5.0
    alpha_fc1: float = 5.0
    outliers: str = "int16"
    log_base: str = "sqrt2"
    profile: str = "fast"
    asmo_iters: Optional[int] = None
    asmo_images: Optional[int] = None
    asmo_batch_size: Optional[int] = None
    asmo_lr_weight: Optional[float] = None
    asmo_lr_act: Optional[float] = None
    asmo_round_reg: float = 0.01
    asmo_kl_weight: float = 10.0
    asmo_kl_temperature: float = 4.0
    asmo_drop_prob: float = 0.5
    device: str = "auto"

    def asmo_setting(self, key: str) -> float:
        """An ASMO setting that has a profile default: the explicit value, else the profile's."""
        value = getattr(self, key)
        return ASMO_PROFILES[self.profile][key] if value is None else value


@dataclass(frozen=True)
class QuantConfig:
    methods: list[str] = field(default_factory=lambda: ["minmax", "percentile", "ptq4vit", "repq", "adfq"])
    bits: list[str] = field(default_factory=lambda: ["w8a8", "w6a6", "w4a4"])
    percentile: PercentileConfig = field(default_factory=PercentileConfig)
    ptq4vit: Ptq4vitConfig = field(default_factory=Ptq4vitConfig)
    adfq: AdfqConfig = field(default_factory=AdfqConfig)


def parse_bits(text: str, where: str = "quant.bits") -> tuple[int, int]:
    """'w4a8' -> (4, 8); weight and activation bits each in 2..8."""
    match = BITS_PATTERN.match(text) if isinstance(text, str) else None
    if not match:
        raise UserInputError(f"{where}: {text!r} is not a bit-width like 'w4a4' (weights and activations 2-8 bits)")
    return int(match.group(1)), int(match.group(2))


def check_quant(q: QuantConfig, calib_images: int, gpu_here: bool = True) -> None:
    """What the types cannot say: known methods and bit-widths, each method's options in range.
    `calib_images` (data.calib_images) bounds the images ASMO may reconstruct on; `gpu_here`: ASMO runs
    in this process, so `device: cuda` needs a GPU on this machine (on Ray: on the cluster, checked there)."""
    if not q.methods:
        raise UserInputError("quant.methods: at least one method is required")
    for i, method in enumerate(q.methods):
        check_choice(method, METHOD_NAMES, f"quant.methods[{i}]")
    for i, bits in enumerate(q.bits):
        parse_bits(bits, f"quant.bits[{i}]")
    for key, values in (("methods", q.methods), ("bits", q.bits)):
        if len(set(values)) != len(values):
            raise UserInputError(f"quant.{key}: duplicate entries in {values}")
    if not 50.0 < q.percentile.percentile <= 100.0:
        raise UserInputError(f"quant.percentile.percentile: must be in (50, 100], got {q.percentile.percentile}")
    _check_ptq4vit(q.ptq4vit)
    _check_adfq(q.adfq, calib_images, gpu_here)


def _check_ptq4vit(p: Ptq4vitConfig) -> None:
    for key, low in (("candidates", 1), ("rounds", 0), ("images", 1)):
        value = getattr(p, key)
        if value is not None and value < low:
            raise UserInputError(f"quant.ptq4vit.{key}: must be >= {low}, got {value}")
    if not 0.0 < p.alpha < p.beta:
        raise UserInputError(f"quant.ptq4vit.alpha, beta: need 0 < alpha < beta, got {p.alpha}, {p.beta}")


def _check_adfq(a: AdfqConfig, calib_images: int, gpu_here: bool) -> None:
    check_choice(a.outliers, ("int16", "float"), "quant.adfq.outliers")
    check_choice(a.log_base, tuple(LOG_BASES), "quant.adfq.log_base")
    check_choice(a.profile, tuple(ASMO_PROFILES), "quant.adfq.profile")
    check_choice(a.device, ("auto", "cpu", "cuda"), "quant.adfq.device")
    for key in ("alpha_qkv", "alpha_fc1", "asmo_lr_weight", "asmo_lr_act", "asmo_kl_temperature"):
        if getattr(a, key) is not None and not getattr(a, key) > 0:
            raise UserInputError(f"quant.adfq.{key}: must be > 0, got {getattr(a, key)}")
    for key in ("asmo_round_reg", "asmo_kl_weight"):
        if getattr(a, key) < 0:
            raise UserInputError(f"quant.adfq.{key}: must be >= 0, got {getattr(a, key)}")
    if not 0.0 <= a.asmo_drop_prob <= 1.0:
        raise UserInputError(f"quant.adfq.asmo_drop_prob: must be in [0, 1], got {a.asmo_drop_prob}")
    for key, low in (("asmo_iters", 0), ("asmo_images", 1), ("asmo_batch_size", 1)):
        value = getattr(a, key)
        if value is not None and value < low:
            raise UserInputError(f"quant.adfq.{key}: must be >= {low}, got {value}")
    if a.asmo_images is not None and a.asmo_images > calib_images:
        raise UserInputError(f"quant.adfq.asmo_images: {a.asmo_images} exceeds data.calib_images "
                             f"({calib_images}); ASMO reconstructs on calibration images")
    if a.device == "cuda" and gpu_here:
        import torch  # here, not at the top: only a config asking for cuda loads torch

        if not torch.cuda.is_available():
            raise UserInputError("quant.adfq.device: cuda requested but no GPU is available")
