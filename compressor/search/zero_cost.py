"""Zero-cost proxies from the NAS literature: baselines and ensemble members.

Each function is ``(model, batch, ctx) -> {term: value}``, higher is better, and works
on a deep copy initialised under ``ctx.seed`` with PyTorch's default initialisation,
in train mode (batch statistics), as the proxies were defined: at initialisation.
The copy is initialised on the CPU (the same weights whatever the device) and then
runs where the batch lies (`--device`).
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .. import prune as P
from .context import Batch, TeacherContext
from .nets import ActivationCodes, default_init, remove_batchnorm, weight_layers


def _fresh(model: nn.Module, ctx: TeacherContext, batch: Batch) -> nn.Module:
    return default_init(copy.deepcopy(model), ctx.seed + 1).to(batch[0].device).train()


def _gradients(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(net(x), y).backward()


def params(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    return {"params": float(P.count_params(model))}


def macs(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    return {"macs": float(P.count_macs(copy.deepcopy(model), batch[0][:1].cpu()))}  # the model is built on the CPU


def grad_norm(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """Σ over Conv/Linear weights of ‖∂L/∂W‖₂."""
    net = _fresh(model, ctx, batch)
    _gradients(net, *batch)
    return {"grad_norm": float(sum(float(m.weight.grad.norm()) for _, m in weight_layers(net) if m.weight.grad is not None))}


def snip(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """Σ |∂L/∂W ⊙ W| (connection sensitivity, Lee et al. 2019)."""
    net = _fresh(model, ctx, batch)
    _gradients(net, *batch)
    return {"snip": float(sum(float((m.weight.grad * m.weight.detach()).abs().sum()) for _, m in weight_layers(net)
                              if m.weight.grad is not None))}


def synflow(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """log Σ |W ⊙ ∂R/∂W| with R = Σ f(1): batch norm removed, |W|, float64, one all-ones input.

    The logarithm keeps the score finite for deep networks (products of many layer
    norms overflow) and does not change the ranking."""
    net = remove_batchnorm(default_init(copy.deepcopy(model), ctx.seed + 1)).to(batch[0].device).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *batch[0].shape[1:]), dtype=torch.float64, device=batch[0].device)
    with torch.enable_grad():
        net(ones).sum().backward()
    total = sum(float((m.weight.grad * m.weight.detach()).abs().sum()) for _, m in weight_layers(net)
                if m.weight.grad is not None)
    return {"synflow": math.log(min(max(total, 1e-300), 1e308))}


def naswot(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """log|det K| with K = ccᵀ + (1−c)(1−c)ᵀ over the samples' binary activation codes c
    (Mellor et al. 2021): networks that tell the samples apart score higher."""
    net = _fresh(model, ctx, batch)
    x = batch[0]
    k = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)

    def add(codes: torch.Tensor) -> None:
        nonlocal k
        c = codes.double()
        k = k + c @ c.T + (1 - c) @ (1 - c).T

    with torch.no_grad(), ActivationCodes(add):
        net(x)
    return {"naswot": float(torch.linalg.slogdet(k).logabsdet)}


def zico(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """Σ_layers log Σ_θ mean|g_θ| / std(g_θ) over two half batches (Li et al. 2023)."""
    x, y = batch
    if len(x) < 4:
        raise ValueError("zico needs a batch of at least 4 samples (two halves)")
    net = _fresh(model, ctx, batch)
    half = len(x) // 2
    grads: dict[str, list[torch.Tensor]] = {}
    for xs, ys in ((x[:half], y[:half]), (x[half:2 * half], y[half:2 * half])):
        _gradients(net, xs, ys)
        for name, m in weight_layers(net):
            if m.weight.grad is not None:
                grads.setdefault(name, []).append(m.weight.grad.detach().flatten().double().clone())
    score = 0.0
    for gs in grads.values():
        g = torch.stack(gs)
        mean, std = g.abs().mean(0), g.std(0, correction=0)
        ok = std > 0
        s = float((mean[ok] / std[ok]).sum())
        if s > 0:
            score += math.log(s)
    return {"zico": score}


def meco(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """Σ over Conv/Linear layers of λ_min of the channel correlation matrix of one sample's
    feature map (Jiang et al. 2023)."""
    net = _fresh(model, ctx, batch)
    total = 0.0

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        nonlocal total
        f = out[0].detach().double()
        if f.dim() == 1:  # a pooled vector: one observation per channel, no correlation
            return
        # channels x positions: conv maps are channels-first, linear outputs (tokens) channels-last
        f = f.flatten(1) if isinstance(_m, nn.modules.conv._ConvNd) else f.reshape(-1, f.shape[-1]).T
        if f.shape[1] < 2 or f.shape[0] < 2:
            return
        corr = torch.nan_to_num(torch.corrcoef(f), nan=0.0)
        total += float(torch.linalg.eigvalsh(corr)[0])

    hooks = [m.register_forward_hook(hook) for _, m in weight_layers(net)]
    try:
        with torch.no_grad():  # the whole batch runs (batch norm needs it); the hook reads sample 0
            net(batch[0])
    finally:
        for h in hooks:
            h.remove()
    return {"meco": total}


def swap(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """log of the number of distinct *sample-wise* activation patterns (Peng et al. 2024, SWAP):
    every rectifier unit's on/off vector across the batch, counted once per distinct vector,
    summed over layers. Richer, less redundant units score higher."""
    net = _fresh(model, ctx, batch)
    total = 0

    def add(codes: torch.Tensor) -> None:
        nonlocal total
        total += int(torch.unique(codes.T.to(torch.uint8), dim=0).shape[0])

    with torch.no_grad(), ActivationCodes(add):
        net(batch[0])
    return {"swap": math.log(max(total, 1))}
