"""Accelerator presets shipped with the package, addressed by name from an experiment config."""

from __future__ import annotations

import difflib
from importlib import resources

from adfq_sim.errors import UserInputError


def preset_names() -> list[str]:
    folder = resources.files("hw_models.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_hardware(hardware: str | dict) -> None:
    """A string must name a preset; an inline mapping is kept as given until the cost model reads it."""
    if isinstance(hardware, str) and hardware not in preset_names():
        guess = difflib.get_close_matches(hardware, preset_names(), n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"presets: {', '.join(preset_names())}"
        raise UserInputError(f"hardware: unknown accelerator preset {hardware!r} ({hint})")
