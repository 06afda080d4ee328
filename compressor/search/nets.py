"""Helpers proxies share: seeded re-initialisation and taps on what a forward pass computes.

Proxies score *architectures*: each works on a deep copy re-initialised under a
fixed seed, so a teacher-derived candidate that arrives with the teacher's
weights scores the same as a fresh one, and the caller's weights never change.

The taps use a `TorchDispatchMode`, which sees every aten op whether a network
calls `F.relu`, a module, or (a lifted teacher graph) `torch.ops.aten.relu`
directly: one mechanism for family students and opaque teacher graphs alike.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _free_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters not owned by a layer we re-initialise (position embeddings, unlifted op weights)."""
    owned = {id(p) for m in model.modules() if isinstance(m, _CONV_LINEAR + _NORMS) for p in m.parameters(recurse=False)}
    return [p for p in model.parameters() if id(p) not in owned]


@torch.no_grad()
def diswot_init(model: nn.Module, seed: int) -> nn.Module:
    """DisWOT's official initialisation, in place: Conv/Linear weights ~ N(0, 1), biases 0,
    normalisation gamma 1 and beta 0; other parameters ~ N(0, 0.02)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _CONV_LINEAR):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    for p in _free_parameters(model):
        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


@torch.no_grad()
def default_init(model: nn.Module, seed: int) -> nn.Module:
    """PyTorch's own per-layer initialisation (`reset_parameters`), seeded, in place."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if m is not model and callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
        for p in _free_parameters(model):
            p.normal_(0.0, 0.02)
    return model


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers, the ones gradient-based proxies sum over."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _CONV_LINEAR)]


def remove_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every batch norm by identity, in place (SynFlow measures the bare linear path)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model


class FeatureMapTap(TorchDispatchMode):
    """Holds the last *feature map* computed so far (until `freeze()`).

    A feature map is a batch-first tensor of rank >= 3 with more than one position
    (B x C x H x W, B x C x L, or tokens B x T x D); the pooled B x C x 1 x 1 that
    follows it is not one. Read when the classifier starts, it is "the last feature
    map before pooling" for any network, whatever its pooling op.
    """

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.feature_map: torch.Tensor | None = None
        self.frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if (not self.frozen and isinstance(out, torch.Tensor) and out.dim() >= 3
                and out.shape[0] == self.batch and math.prod(out.shape[2:]) > 1):
            self.feature_map = out
        return out


_ACTIVATIONS = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default, torch.ops.aten.gelu.default,
                torch.ops.aten.gelu_.default, torch.ops.aten.silu.default, torch.ops.aten.silu_.default,
                torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}


class ActivationCodes(TorchDispatchMode):
    """Calls `on_codes(codes)` with the binary pattern (input > 0, B x N) of every
    rectifier-like activation, before the op runs (in-place ops overwrite their input)."""

    def __init__(self, on_codes: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.on_codes = on_codes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _ACTIVATIONS and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
            self.on_codes((args[0] > 0).flatten(1))
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def output_spread(model: nn.Module, x: torch.Tensor) -> float:
    """How much `model`'s outputs vary across the samples of `x`: the per-output standard deviation
    over the batch, averaged; a copy in train mode, as distillation starts it (batch statistics)."""
    net = copy.deepcopy(model).train()
    out = net(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return float(out.float().flatten(1).std(0).mean())
