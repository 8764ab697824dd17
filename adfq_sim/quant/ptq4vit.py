"""PTQ4ViT (Yuan et al., ECCV 2022) as a recipe: twin-uniform quantizers plus a Hessian-guided search.

Quantizers: twin-uniform for the softmax output (the probs operand of softmax.V) and the GELU output
(fc2 input); uniform per tensor (max-based) for every other activation; weights uniform per output
channel. Then, layer by layer, the search alternates between the layer's two operands (weight then
input for a GEMM, A then B for an attention matmul), `rounds` times, each time picking among
`candidates` scales alpha..beta times the operand's initial (max-based) scale the one that minimises
the Hessian-guided distance of the layer output O:

    E[ dO^T diag((dL/dO)^2) dO ],   dO = O(quantized) - O(float),

with L the task loss of the float model. At the float point the KL to the float output has a zero
gradient, so L is the cross-entropy against the float model's own arg-max prediction (sum over images,
so an image's weight never depends on its batch). Inputs, outputs and gradients come from the float
model on the calibration images (PTQ4ViT's parallel mode); each search also keeps the current value
as a candidate, so no layer's distance ever increases. Weights are searched per output channel (a
channel's scale only moves its own outputs). For the softmax quantizer the candidates are the shifts
m (D1 = D2 / 2^m, D2 fixed by the maximum, as PTQ4ViT's split search); for the GELU quantizer, the
positive step D2, the negative step following from it. Only static parameters change.

The float model is evaluated as the QuantModel with every quantizer disabled (the same function, with
the GEMM boundaries exposed), so every QuantLinear / QuantConv2d and every attention module with
q_q / k_q / v_q / probs_q quantizers (ViT and Swin alike) is searched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from adfq_sim.hooks import attached
from adfq_sim.progress import bar
from adfq_sim.quant.model import QuantModel
from adfq_sim.quant.modules import QuantConv2d, QuantLinear
from adfq_sim.quant.options import Ptq4vitConfig, QuantConfig
from adfq_sim.quant.quantizers import GELU_MINIMUM, Quantizer, UniformQuantizer
from adfq_sim.quant.recipes import ACTIVATION_ROLES, WEIGHT_PER_CHANNEL_MINMAX, Recipe, spec
from adfq_sim.quant.twin_uniform import MAX_SHIFT, TwinUniformQuantizer, cover_shift

log = logging.getLogger(__name__)

# Captured layer data (inputs, float outputs, gradient weights) is held for a group of layers at a
# time; groups are sized to stay under this many bytes, which bounds memory on ImageNet-sized models.
CAPTURE_BUDGET_BYTES = 1 << 30
# Candidates are evaluated in chunks whose largest tensor holds about this many elements: bounded
# memory, and temporaries small enough for the allocator to reuse.
CHUNK_ELEMENTS = 1 << 21
_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
_ATTENTION_QUANTIZERS = ("q_q", "k_q", "v_q", "probs_q")


def ptq4vit_recipe(quant: QuantConfig) -> Recipe:
    activations = {role: spec("uniform", observer="minmax") for role in ACTIVATION_ROLES}
    activations["probs"] = spec("twin_uniform", mode="softmax")
    activations["fc2_in"] = spec("twin_uniform", mode="gelu", lower=GELU_MINIMUM)
    settings = quant.ptq4vit
    optimize = partial(hessian_search, settings=settings) if settings.rounds > 0 else None
    return Recipe("ptq4vit", WEIGHT_PER_CHANNEL_MINMAX, activations, optimize=optimize)


@dataclass
class _Layer:
    """One searched product: a GEMM module (operands: weight, input) or an attention matmul A @ B."""

    name: str
    quantizers: tuple[Quantizer, Quantizer]  # one per operand, in search order
    module: Optional[nn.Module] = None       # QuantLinear / QuantConv2d; None for an attention matmul
    channel_dim: int = -1                    # output dim of the weight's output channel

    def operands(self, data: "_Data") -> tuple[torch.Tensor, torch.Tensor]:
        return (self.module.weight, data.inputs[0]) if self.module is not None else data.inputs

    def product(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The layer output from quantized operands, each with a leading candidate dim (one of size 1).

        The same arithmetic as the module's forward, batched over candidates: [candidates, *output].
        """
        if self.module is None:
            return first @ second
        m, weight, x = self.module, first, second
        count, out = weight.shape[0], weight.shape[1]
        conv = isinstance(m, QuantConv2d)
        if count == 1:
            if conv:
                y = F.conv2d(x.flatten(0, 1), weight[0], m.bias, m.stride, m.padding)
                return y.unflatten(0, (x.shape[0], -1))
            return F.linear(x, weight[0], m.bias)
        bias = None if m.bias is None else m.bias.repeat(count)
        if conv:
            y = F.conv2d(x[0], weight.flatten(0, 1), bias, m.stride, m.padding)
            return y.unflatten(1, (count, out)).movedim(1, 0)
        return F.linear(x[0], weight.flatten(0, 1), bias).unflatten(-1, (count, out)).movedim(-2, 0)


@dataclass
class _Data:
    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor            # float output
    weight: Optional[torch.Tensor]  # (dL/dO)^2, or None for plain MSE

    def nbytes(self) -> int:
        tensors = [*self.inputs, self.target] + ([self.weight] if self.weight is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


def _layers(qmodel: QuantModel) -> list[_Layer]:
    layers = []
    for name, module in qmodel.model.named_modules():
        if isinstance(module, (QuantLinear, QuantConv2d)):
            channel_dim = 1 if isinstance(module, QuantConv2d) else -1
            layers.append(_Layer(name, (module.weight_q, module.act_q), module, channel_dim))
        elif all(hasattr(module, q) for q in _ATTENTION_QUANTIZERS):
            layers.append(_Layer(f"{name}.q@k", (module.q_q, module.k_q)))
            layers.append(_Layer(f"{name}.probs@v", (module.probs_q, module.v_q)))
    for layer in layers:
        if layer.module is None and not all(_elementwise(q) for q in layer.quantizers):
            raise ValueError(f"ptq4vit: {layer.name} needs per-tensor operand quantizers")
    return layers


def _elementwise(q: Quantizer) -> bool:
    """Per-tensor quantizers commute with the transposes between a quantizer and its matmul."""
    return isinstance(q, TwinUniformQuantizer) or (isinstance(q, UniformQuantizer) and q.granularity == "tensor")


class _MatmulTap(TorchFunctionMode):
    """Records each matmul whose first operand is a tagged quantizer output (Q.K^T and probs.V)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[torch.Tensor, _Layer]] = {}
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _MATMULS and id(args[0]) in self.tags:
            tensor, layer = self.tags.pop(id(args[0]))
            if tensor is args[0]:
                self.records[layer.name] = (args[0], args[1], out)
        return out


def _capture_batch(qmodel: QuantModel, layers: list[_Layer], images: torch.Tensor,
                   hessian: bool) -> dict[str, _Data]:
    """Inputs, float outputs and squared task-loss gradients of `layers` on one batch."""
    tap, records = _MatmulTap(), {}

    def gemm_hook(layer: _Layer):
        def hook(module, args, out):
            records[layer.name] = (args[0], None, out)
        return hook

    def tag_hook(layer: _Layer):
        def hook(module, args, out):
            tap.tags[id(out)] = (out, layer)
        return hook

    hooks = (layer.module.register_forward_hook(gemm_hook(layer)) if layer.module is not None
             else layer.quantizers[0].register_forward_hook(tag_hook(layer)) for layer in layers)
    with attached(hooks), torch.set_grad_enabled(hessian), tap:
        logits = qmodel(images.detach().requires_grad_(hessian))
    records.update(tap.records)
    missing = [layer.name for layer in layers if layer.name not in records]
    if missing:
        raise RuntimeError(f"ptq4vit: no matmul found for {missing} (the quantizer output must be its first operand)")
    outs = [records[layer.name][2] for layer in layers]
    grads = [None] * len(layers)
    if hessian:  # the float model's own arg-max as label: the KL to it has a zero gradient here
        loss = F.cross_entropy(logits, logits.argmax(-1).detach(), reduction="sum")
        grads = torch.autograd.grad(loss, outs)
    data = {}
    for layer, out, grad in zip(layers, outs, grads):
        a, b, _ = records[layer.name]
        inputs = (a.detach(),) if b is None else (a.detach(), b.detach())
        weight = grad.detach() ** 2 if hessian else None
        data[layer.name] = _Data(inputs, out.detach(), weight)
    return data


def _capture(qmodel: QuantModel, layers: list[_Layer], batches: Sequence[torch.Tensor],
             hessian: bool) -> dict[str, _Data]:
    per_batch = [_capture_batch(qmodel, layers, images, hessian) for images in batches]
    merged = {}
    for layer in layers:
        parts = [d[layer.name] for d in per_batch]
        inputs = tuple(torch.cat([p.inputs[i] for p in parts]) for i in range(len(parts[0].inputs)))
        weight = torch.cat([p.weight for p in parts]) if hessian else None
        merged[layer.name] = _Data(inputs, torch.cat([p.target for p in parts]), weight)
    return merged


def _captured_layers(qmodel: QuantModel, batches: Sequence[torch.Tensor],
                     hessian: bool) -> Iterator[tuple[_Layer, _Data]]:
    """Each layer with its float data, captured a memory-bounded group of layers at a time.

    Every quantizer is disabled meanwhile (the float model) and re-enabled afterwards.
    """
    layers = _layers(qmodel)
    quantizers = [q for _, q in qmodel.named_quantizers()]
    for q in quantizers:
        q.enabled = False
    try:
        images = sum(len(b) for b in batches)
        probe = _capture_batch(qmodel, layers, batches[0][:1], hessian)
        groups, size = [[]], 0
        for layer in layers:
            need = probe[layer.name].nbytes() * images
            if groups[-1] and size + need > CAPTURE_BUDGET_BYTES:
                groups.append([])
                size = 0
            groups[-1].append(layer)
            size += need
        for group in groups:
            data = _capture(qmodel, group, batches, hessian)
            for q in quantizers:
                q.enabled = True
            for layer in group:
                yield layer, data.pop(layer.name)
            for q in quantizers:
                q.enabled = False
    finally:
        for q in quantizers:
            q.enabled = True


_PARAMS = {TwinUniformQuantizer: ("step", "shift"), UniformQuantizer: ("scale",)}


def _param_names(q: Quantizer) -> tuple[str, ...]:
    for cls, names in _PARAMS.items():
        if isinstance(q, cls):
            return names
    raise TypeError(f"ptq4vit cannot search a {type(q).__name__}")


def _state(q: Quantizer) -> dict[str, torch.Tensor]:
    return {name: getattr(q, name).detach().clone() for name in _param_names(q)}


def _load(q: Quantizer, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in state.items():
            getattr(q, name).copy_(value)


def _candidates(q: Quantizer, initial: dict[str, torch.Tensor], grid: torch.Tensor) -> list[dict]:
    """Candidate states of `q`, the current one first: a tie (e.g. a zero gradient) keeps it."""
    if isinstance(q, TwinUniformQuantizer) and q.mode == "softmax":
        shift = initial["shift"]
        states = [{"step": initial["step"], "shift": shift.new_tensor(float(m))} for m in range(MAX_SHIFT + 1)]
    elif isinstance(q, TwinUniformQuantizer):
        steps = grid.to(initial["step"].device) * initial["step"]
        states = [{"step": s, "shift": cover_shift(s, q.bits, q.lower)} for s in steps]
    else:
        states = [{"scale": g * initial["scale"]} for g in grid.to(initial["scale"].device)]
    return [_state(q)] + states


def _quantized(q: Quantizer, raw: torch.Tensor, states: list[dict]) -> torch.Tensor:
    """q applied to `raw` once per state: [len(states), *raw.shape] (the quantizer's own code)."""
    stacked = {}
    for name in states[0]:
        value = torch.stack([s[name] for s in states])
        stacked[name] = value.view(len(states), *([1] * (raw.ndim + 1 - value.ndim)), *value.shape[1:])
    return functional_call(q, stacked, (raw,))


def _distances(layer: _Layer, data: _Data, index: int, states: list[dict], per_channel: bool) -> torch.Tensor:
    """Hessian-weighted squared output error per candidate state of operand `index`: [C] or [C, out]."""
    raw = layer.operands(data)
    other = layer.quantizers[1 - index]
    fixed = _quantized(other, raw[1 - index], [_state(other)])
    chunk = max(1, CHUNK_ELEMENTS // max(raw[index].numel(), raw[1 - index].numel(), data.target.numel()))
    results = []
    with torch.no_grad():
        for start in range(0, len(states), chunk):
            trial = _quantized(layer.quantizers[index], raw[index], states[start:start + chunk])
            err = (layer.product(*((trial, fixed) if index == 0 else (fixed, trial))) - data.target).square_()
            if data.weight is not None:
                err.mul_(data.weight)
            if per_channel:
                err = err.movedim(layer.channel_dim % data.target.ndim + 1, 1)
                results.append(err.reshape(*err.shape[:2], -1).sum(-1))
            else:
                results.append(err.reshape(len(err), -1).sum(-1))
    return torch.cat(results)


def _distance(layer: _Layer, data: _Data) -> float:
    """The layer's distance with its quantizers' current parameters."""
    return float(_distances(layer, data, 0, [_state(layer.quantizers[0])], per_channel=False)[0])


def _search_operand(layer: _Layer, index: int, data: _Data, initial: dict, grid: torch.Tensor) -> None:
    """Load the candidate state with the smallest distance (per output channel for per-channel weights)."""
    q = layer.quantizers[index]
    per_channel = isinstance(q, UniformQuantizer) and q.granularity == "channel"
    states = _candidates(q, initial, grid)
    best = _distances(layer, data, index, states, per_channel).argmin(0)
    if not per_channel:
        _load(q, states[int(best)])
        return
    scales = torch.stack([s["scale"] for s in states])  # [candidates, out, 1, ...]
    pick = best.view(1, -1, *([1] * (scales.ndim - 2)))
    _load(q, {"scale": scales.gather(0, pick).squeeze(0)})


def hessian_search(qmodel: QuantModel, float_model: nn.Module, calib_batches: Sequence[torch.Tensor],
                   settings: Ptq4vitConfig) -> None:
    """Refine every searched layer's operand scales in place (the recipe's `optimize` hook).

    `float_model` is not read: the QuantModel with its quantizers disabled is the same function.
    """
    grid = torch.linspace(settings.alpha, settings.beta, settings.candidates)
    batches = _search_batches(calib_batches, settings.images)
    layers = _captured_layers(qmodel, batches, settings.hessian)
    for layer, data in bar(layers, "ptq4vit search", len(_layers(qmodel)), unit="layer", leave=False):
        initial = [_state(q) for q in layer.quantizers]
        before = _distance(layer, data) if log.isEnabledFor(logging.DEBUG) else None
        for _ in range(settings.rounds):
            for index in (0, 1):
                _search_operand(layer, index, data, initial[index], grid)
        if before is not None:
            log.debug("ptq4vit %s: distance %.4g -> %.4g", layer.name, before, _distance(layer, data))


def hessian_distances(qmodel: QuantModel, calib_batches: Sequence[torch.Tensor],
                      settings: Ptq4vitConfig) -> dict[str, float]:
    """The distance each searched layer has with the quantizers' current parameters."""
    batches = _search_batches(calib_batches, settings.images)
    return {layer.name: _distance(layer, data)
            for layer, data in _captured_layers(qmodel, batches, settings.hessian)}


def _search_batches(batches: Sequence[torch.Tensor], images: Optional[int]) -> list[torch.Tensor]:
    """The first `images` calibration images (all of them when None), in their batches."""
    if images is None:
        return list(batches)
    taken = []
    for batch in batches:
        left = images - sum(len(b) for b in taken)
        if left <= 0:
            break
        taken.append(batch[:left])
    return taken
