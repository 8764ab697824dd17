"""Experiment config: a typed schema, validated completely before any work starts.

Every key has a default, so a YAML file holding only `hardware:` is a complete config. Unknown keys
are errors with a did-you-mean; a wrong type names the field. Relative paths are taken from the
current working directory.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from adfq_sim.data.options import DataConfig, check_data
from adfq_sim.errors import UserInputError
from adfq_sim.models.options import ModelConfig, check_model
from adfq_sim.schema import build_dataclass, check_choice, read_yaml_mapping

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


@dataclass(frozen=True)
class VerifyConfig:
    images: int = 16


@dataclass(frozen=True)
class ReportConfig:
    """What the report singles out: `focus` ("adfq w4a4") is the (method, bits) whose per-layer energy and
    quantizer levels are drawn; by default the recommended one, the lowest-energy pair whose top-1 is at
    most `max_drop` points below FP32 (the most accurate pair where none is)."""
    focus: Optional[str] = None
    max_drop: float = 1.0


@dataclass(frozen=True)
class Config:
    name: str = "adfq-run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    hardware: Union[str, dict, list[Union[str, dict]]] = "edge_npu"
    out: str = "runs"
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_bits(text: str, where: str = "quant.bits") -> tuple[int, int]:
    """'w4a8' -> (4, 8); weight and activation bits each in 2..8."""
    match = BITS_PATTERN.match(text) if isinstance(text, str) else None
    if not match:
        raise UserInputError(f"{where}: {text!r} is not a bit-width like 'w4a4' (weights and activations 2-8 bits)")
    return int(match.group(1)), int(match.group(2))


def _validate(cfg: Config) -> None:
    """Semantic checks that the types alone cannot express (files exist, names are known, ranges)."""
    from adfq_sim.quant.recipes import METHODS

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", cfg.name):
        raise UserInputError(f"name: {cfg.name!r} must be a plain folder name (letters, digits, . _ -)")
    m, d, q = cfg.model, cfg.data, cfg.quant
    check_model(m)

    check_data(d, m.name)

    if not q.methods:
        raise UserInputError("quant.methods: at least one method is required")
    for i, method in enumerate(q.methods):
        check_choice(method, METHODS, f"quant.methods[{i}]")
    for i, bits in enumerate(q.bits):
        parse_bits(bits, f"quant.bits[{i}]")
    for key, values in (("methods", q.methods), ("bits", q.bits)):
        if len(set(values)) != len(values):
            raise UserInputError(f"quant.{key}: duplicate entries in {values}")
    if not 50.0 < q.percentile.percentile <= 100.0:
        raise UserInputError(f"quant.percentile.percentile: must be in (50, 100], got {q.percentile.percentile}")

    _validate_ptq4vit(q.ptq4vit)
    _validate_adfq(q.adfq, d)
    if cfg.verify.images < 1:
        raise UserInputError(f"verify.images: must be >= 1, got {cfg.verify.images}")
    _validate_report(cfg.report, q)

    from hw_models.spec import load_specs

    load_specs(cfg.hardware)  # preset names, spec files or inline specs (one or a list): validated here


def parse_focus(text: str) -> tuple[str, str]:
    """'adfq w4a4' (any case) -> ('adfq', 'w4a4')."""
    parts = text.lower().split()
    if len(parts) != 2:
        raise UserInputError(f"report.focus: expected 'METHOD BITS' like 'adfq w4a4', got {text!r}")
    return parts[0], parts[1]


def _validate_report(r: ReportConfig, q: QuantConfig) -> None:
    if not r.max_drop >= 0:
        raise UserInputError(f"report.max_drop: must be >= 0 (top-1 points below FP32), got {r.max_drop}")
    if r.focus is not None:
        method, bits = parse_focus(r.focus)
        check_choice(method, tuple(q.methods), "report.focus (method)")
        check_choice(bits, tuple(q.bits), "report.focus (bits)")


def _validate_ptq4vit(p: Ptq4vitConfig) -> None:
    for key, low in (("candidates", 1), ("rounds", 0), ("images", 1)):
        value = getattr(p, key)
        if value is not None and value < low:
            raise UserInputError(f"quant.ptq4vit.{key}: must be >= {low}, got {value}")
    if not 0.0 < p.alpha < p.beta:
        raise UserInputError(f"quant.ptq4vit.alpha, beta: need 0 < alpha < beta, got {p.alpha}, {p.beta}")


def _validate_adfq(a: AdfqConfig, d: DataConfig) -> None:
    check_choice(a.outliers, ("int16", "float"), "quant.adfq.outliers")
    check_choice(a.log_base, ("sqrt2", "2"), "quant.adfq.log_base")
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
    if a.asmo_images is not None and a.asmo_images > d.calib_images:
        raise UserInputError(f"quant.adfq.asmo_images: {a.asmo_images} exceeds data.calib_images "
                             f"({d.calib_images}); ASMO reconstructs on calibration images")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserInputError("quant.adfq.device: cuda requested but no GPU is available")


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Read, type-check and validate a YAML config. `overrides` are top-level keys (e.g. from the CLI)."""
    path = Path(path)
    raw = {"name": path.stem, **read_yaml_mapping(path, "config"), **(overrides or {})}
    try:
        cfg = build_dataclass(Config, raw, "")
        _validate(cfg)
    except UserInputError as exc:
        raise UserInputError(f"{path}: {exc}") from None
    return cfg
