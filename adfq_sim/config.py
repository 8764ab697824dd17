"""Experiment config: a typed schema, validated completely before any work starts.

Every key has a default, so a YAML file holding only `hardware:` is a complete config. Unknown keys
are errors with a did-you-mean; a wrong type names the field. Relative paths are taken from the
current working directory.

Each part of the program owns its section and that section's checks (`models.options`,
`data.options`, `quant.options`, and `hw_models.spec` for `hardware:`); this module composes them,
so they never import it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from adfq_sim.data.options import DataConfig, check_data
from adfq_sim.errors import UserInputError
from adfq_sim.models.options import ModelConfig, check_model, input_channels
from adfq_sim.quant.options import QuantConfig, check_quant
from adfq_sim.runs.options import ExecutorConfig, check_executor
from adfq_sim.schema import build_dataclass, check_choice, read_yaml_mapping


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
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _validate(cfg: Config) -> None:
    """Semantic checks that the types alone cannot express (files exist, names are known, ranges)."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", cfg.name):
        raise UserInputError(f"name: {cfg.name!r} must be a plain folder name (letters, digits, . _ -)")
    m, d, q = cfg.model, cfg.data, cfg.quant
    check_model(m)
    normalizes = d.kind == "imagefolder" and (d.mean is not None or d.std is not None)
    check_data(d, m.name, input_channels(m) if normalizes else None)
    check_quant(q, d.calib_images, gpu_here=cfg.executor.kind == "local")
    if cfg.verify.images < 1:
        raise UserInputError(f"verify.images: must be >= 1, got {cfg.verify.images}")
    _validate_report(cfg.report, q)
    check_executor(cfg.executor)

    from hw_models.spec import load_specs  # here: hw_models imports numpy; importing config stays cheap

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


def _merged(raw: dict, overrides: dict) -> dict:
    """`raw` with `overrides` on top; a mapping override sets only the keys it names in that section."""
    merged = dict(raw)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(raw: dict, where: str) -> Config:
    """Type-check and validate a config mapping (a YAML file's, or one a run recorded); errors start with
    `where`."""
    try:
        cfg = build_dataclass(Config, raw, "")
        _validate(cfg)
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Read, type-check and validate a YAML config. `overrides` are keys from the command line, e.g.
    {"out": "runs", "executor": {"kind": "ray"}}."""
    path = Path(path)
    return config_from_dict(_merged({"name": path.stem, **read_yaml_mapping(path, "config")}, overrides or {}),
                            str(path))
