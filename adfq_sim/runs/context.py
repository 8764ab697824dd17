"""What every cell of a run reads: the model, the data, the accelerators, the calibration images.

Built from the config alone, so a Ray worker builds the same context as the process that started the
run (each worker builds it once and reuses it for every task of the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from adfq_sim.config import Config
from adfq_sim.data.sources import DataSource, build_data_source
from adfq_sim.distributions import capture
from adfq_sim.models.loading import LoadedModel, load_model
from hw_models.spec import AcceleratorSpec, load_specs


@dataclass
class RunContext:
    cfg: Config
    loaded: LoadedModel
    data: DataSource
    specs: list[AcceleratorSpec]

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def eval_images(self) -> int:
        return self.data.description["eval_images"]

    @cached_property
    def calib_batches(self) -> list[torch.Tensor]:
        """The calibration images, read once and shared by every (method, bits)."""
        return [images for images, _ in self.data.batches("calib", self.cfg.data.batch_size)]

    @cached_property
    def distributions(self) -> dict:
        """The FP32 activation histograms the report draws (and each cell's quantizers code)."""
        return capture(self.model, self.calib_batches)


def build_context(cfg: Config) -> RunContext:
    """Load the configured model, data and accelerator specs (each failure a UserInputError naming it)."""
    torch.manual_seed(cfg.seed)
    specs = load_specs(cfg.hardware)
    loaded = load_model(cfg.model)
    data = build_data_source(cfg.data, loaded.model, loaded.num_classes, cfg.seed)
    return RunContext(cfg, loaded, data, specs)
