"""The quantization methods by name: each name's recipe builder.

Apart from `recipes` because the method modules build on it: importing them here keeps every import
one way (recipes <- adfq / repq / ptq4vit <- methods). The names are those of `quant.options`, which
the config checks without torch.
"""

from __future__ import annotations

from typing import Callable

from adfq_sim.quant.adfq import adfq_recipe
from adfq_sim.quant.options import QuantConfig
from adfq_sim.quant.ptq4vit import ptq4vit_recipe
from adfq_sim.quant.recipes import Recipe, spec, uniform_everywhere
from adfq_sim.quant.repq import repq_recipe


def _minmax(quant: QuantConfig) -> Recipe:
    return uniform_everywhere("minmax", spec("uniform", observer="minmax"))


def _percentile(quant: QuantConfig) -> Recipe:
    return uniform_everywhere("percentile", spec("uniform", observer="percentile",
                                                 percentile=quant.percentile.percentile))


METHODS: dict[str, Callable[[QuantConfig], Recipe]] = {"minmax": _minmax, "percentile": _percentile,
                                                     "adfq": adfq_recipe, "repq": repq_recipe,
                                                     "ptq4vit": ptq4vit_recipe}


def build_recipe(method: str, quant: QuantConfig) -> Recipe:
    return METHODS[method](quant)
