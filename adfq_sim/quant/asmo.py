"""ASMO — Attention-score enhanced Module-wise Optimization (ADFQ-ViT).

Module by module, in forward order (patch embedding, then each block's attention module and MLP
module, then the head; Swin's patch-merging reductions where they occur), ASMO learns the weights'
rounding (AdaRound) jointly with the activation quantizers' steps so that the quantized module
reproduces the float module's output. The input is a QDrop-style random mix of the quantized model's
and the float model's activations; attention modules add a KL term between the temperature-softened
float and quantized attention maps. Straight-through estimators carry every rounding's gradient.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adfq_sim.errors import UserInputError
from adfq_sim.progress import bar
from adfq_sim.quant.adaround import AdaRoundWeight
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.modules import QuantConv2d, QuantLinear
from adfq_sim.quant.options import AdfqConfig
from adfq_sim.quant.quantizers import Quantizer

log = logging.getLogger(__name__)

ROUNDING_WARMUP = 0.2        # fraction of iterations before the rounding regulariser starts
BETA_START, BETA_END = 20.0, 2.0
MIN_STEP = 1e-8               # learned steps stay positive


@dataclass(frozen=True)
class AsmoSettings:
    iters: int
    images: int
    images_explicit: bool
    batch_size: int
    lr_weight: float
    lr_act: float
    round_reg: float
    kl_weight: float
    kl_temperature: float
    drop_prob: float
    device: str
    seed: int = 0

    @classmethod
    def from_config(cls, a: AdfqConfig) -> "AsmoSettings":
        return cls(iters=a.asmo_setting("asmo_iters"), images=a.asmo_setting("asmo_images"),
                   images_explicit=a.asmo_images is not None, batch_size=a.asmo_setting("asmo_batch_size"),
                   lr_weight=a.asmo_setting("asmo_lr_weight"), lr_act=a.asmo_setting("asmo_lr_act"),
                   round_reg=a.asmo_round_reg,
                   kl_weight=a.asmo_kl_weight, kl_temperature=a.asmo_kl_temperature,
                   drop_prob=a.asmo_drop_prob, device=a.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("quant.adfq.device: cuda requested but no GPU is available")
    return torch.device(name)


def asmo_units(model: nn.Module) -> list[str]:
    """Names of the modules ASMO reconstructs, in forward (registration) order."""
    units: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(unit + ".") for unit in units):
            continue
        is_attention = hasattr(module, "probs_q")
        is_mlp = isinstance(getattr(module, "fc1", None), QuantLinear) and isinstance(getattr(module, "fc2", None), QuantLinear)
        if is_attention or is_mlp or isinstance(module, (QuantLinear, QuantConv2d)):
            units.append(name)
    return units


class _Stop(Exception):
    """Raised by a capture hook: nothing after the captured module needs to run."""


@torch.no_grad()
def _capture(model: nn.Module, module: nn.Module, images: torch.Tensor, batch_size: int,
             with_output: bool) -> tuple[list, torch.Tensor | None]:
    """The module's call arguments (and outputs) for every image, running the model only up to it."""
    calls, outputs = [], []

    def hook(mod, args, kwargs, out):
        calls.append((args, kwargs))
        if with_output:
            outputs.append(out.detach())
        raise _Stop

    with module.register_forward_hook(hook, with_kwargs=True):
        for start in range(0, len(images), batch_size):
            try:
                model(images[start:start + batch_size])
            except _Stop:
                pass
    return calls, (torch.cat(outputs) if with_output else None)


def _inputs(calls: list) -> torch.Tensor:
    return torch.cat([args[0] for args, _ in calls])


def _softened_log_probs(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(torch.log(probs.clamp_min(1e-12)) / temperature, dim=-1)


def attention_kl(float_probs: torch.Tensor, quant_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(float || quantized) of temperature-softened attention maps, averaged over attention rows."""
    log_p = _softened_log_probs(float_probs, temperature)
    log_q = _softened_log_probs(quant_probs, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def _unit_quantizers(unit: nn.Module) -> tuple[list[tuple[nn.Module, Quantizer]], list[Quantizer]]:
    """(GEMM module, weight quantizer) pairs and the activation quantizers inside a unit."""
    gemms = [m for m in unit.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    weight_qs = {id(m.weight_q) for m in gemms}
    acts = [q for q in unit.modules() if isinstance(q, Quantizer) and id(q) not in weight_qs]
    return [(m, m.weight_q) for m in gemms], acts


def _float_mirror(unit: nn.Module) -> nn.Module:
    """The unit with every quantizer off: the float computation, with the attention-map hook."""
    mirror = copy.deepcopy(unit)
    for q in mirror.modules():
        if isinstance(q, Quantizer):
            q.enabled = False
    return mirror


def optimize_unit(unit: nn.Module, q_in: torch.Tensor, fp_in: torch.Tensor, fp_out: torch.Tensor,
                  kwargs: dict, settings: AsmoSettings, generator: torch.Generator, desc: str) -> dict:
    """Learn one unit's weight rounding and activation steps; returns its loss before and after."""
    float_unit = _float_mirror(unit)
    gemms, acts = _unit_quantizers(unit)
    n, device = len(q_in), q_in.device

    def call_kwargs(idx: torch.Tensor) -> dict:
        """The unit's keyword arguments for a minibatch of samples.

        Swin's window attention gets a shifted-window mask per window of an image ([windows, N, N]);
        the captured samples are windows, image by image, so sample i takes mask[i % windows].
        """
        mask = kwargs.get("mask")
        if isinstance(mask, torch.Tensor):
            return {**kwargs, "mask": mask[idx % mask.shape[0]]}
        return kwargs

    @torch.no_grad()
    def full_mse() -> float:
        """Reconstruction MSE over all ASMO images with the quantized inputs (no input mixing)."""
        outs = []
        for start in range(0, n, settings.batch_size):
            idx = torch.arange(start, min(n, start + settings.batch_size), device=device)
            outs.append(unit(q_in[idx], **call_kwargs(idx)))
        return float(F.mse_loss(torch.cat(outs), fp_out))

    before = full_mse()
    rounders = []
    for module, weight_q in gemms:
        rounder = AdaRoundWeight(weight_q, module.weight).to(module.weight.device)
        module.weight_q = rounder
        rounders.append((module, weight_q, rounder))
    steps = [p for q in acts for p in q.parameters()]
    for p in steps:
        p.requires_grad_(True)
    opt_w = torch.optim.Adam([r.v for _, _, r in rounders], lr=settings.lr_weight) if rounders else None
    opt_a = torch.optim.Adam(steps, lr=settings.lr_act) if steps else None
    sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=max(1, settings.iters), eta_min=0) if opt_a else None
    is_attention = hasattr(unit, "probs_q")

    def reconstruction_loss(idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mse = F.mse_loss(unit(x, **call_kwargs(idx)), fp_out[idx])
        if not (is_attention and settings.kl_weight > 0):
            return mse
        with torch.no_grad():
            float_unit(fp_in[idx], **call_kwargs(idx))
        return mse + settings.kl_weight * attention_kl(float_unit.last_probs, unit.last_probs, settings.kl_temperature)

    if is_attention:
        unit.keep_probs = float_unit.keep_probs = True
    try:
        warmup = int(ROUNDING_WARMUP * settings.iters)
        for it in bar(range(settings.iters), desc, settings.iters, unit="it", leave=False):
            idx = torch.randperm(n, generator=generator, device="cpu")[:settings.batch_size].to(device)
            x = q_in[idx]
            if settings.drop_prob > 0:
                keep_float = torch.rand(x.shape, generator=generator, device="cpu").to(device) < settings.drop_prob
                x = torch.where(keep_float, fp_in[idx], x)
            loss = reconstruction_loss(idx, x)
            if rounders and it >= warmup and settings.round_reg > 0:
                progress = (it - warmup) / max(1, settings.iters - warmup)
                beta = BETA_END + (BETA_START - BETA_END) * (1 - progress)
                loss = loss + settings.round_reg * sum(r.regularizer(beta) for _, _, r in rounders)
            for opt in (opt_w, opt_a):
                if opt:
                    opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in (opt_w, opt_a):
                if opt:
                    opt.step()
            if sched_a:
                sched_a.step()
            with torch.no_grad():
                for p in steps:
                    p.clamp_(min=MIN_STEP)
    finally:
        for module, weight_q, rounder in rounders:
            module.weight.data.copy_(rounder.hard_weight())
            module.weight_q = weight_q
        for p in steps:
            p.requires_grad_(False)
        unit.keep_probs = False
        unit.last_probs = None
    return {"unit": desc, "mse_before": before, "mse_after": full_mse()}


def asmo_optimize(qmodel: QuantModel, float_model: nn.Module, calib_batches: Sequence[torch.Tensor],
                  settings: AsmoSettings) -> list[dict]:
    """Optimize every unit of a calibrated QuantModel in place; returns per-unit reconstruction MSEs."""
    images = torch.cat(list(calib_batches))
    if settings.images > len(images) and settings.images_explicit:
        raise UserInputError(f"quant.adfq.asmo_images: {settings.images} exceeds the {len(images)} "
                             "calibration images (data.calib_images)")
    images = images[:settings.images]
    device = resolve_device(settings.device)
    float_ref = copy.deepcopy(float_model).to(device).eval() if device.type != "cpu" else float_model
    qmodel.to(device).eval()
    for p in qmodel.parameters():  # only the rounding variables and the steps of the unit being
        p.requires_grad_(False)      # optimized learn; the float model is only read, under no_grad
    images = images.to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    report = []
    try:
        for name in asmo_units(qmodel.model):
            unit = qmodel.model.get_submodule(name)
            q_calls, _ = _capture(qmodel.model, unit, images, settings.batch_size, with_output=False)
            fp_calls, fp_out = _capture(float_ref, float_ref.get_submodule(name), images, settings.batch_size,
                                        with_output=True)
            kwargs = q_calls[0][1]
            report.append(optimize_unit(unit, _inputs(q_calls), _inputs(fp_calls), fp_out, kwargs,
                                        settings, generator, f"ASMO {name}"))
            log.debug("ASMO %s: mse %.3g -> %.3g", name, report[-1]["mse_before"], report[-1]["mse_after"])
    finally:
        qmodel.to("cpu")
    return report
