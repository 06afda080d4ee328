"""Coupled channel groups, channel order, nested masks and dense extraction.

The only module that imports Torch-Pruning. Search (width ratios per group),
nested distillation (prefix masks) and export (dense sub-networks) all speak in
terms of the `ChannelGroup`s found here, so a width means the same thing in
every stage.

Nesting works in importance order: each group's channels are ranked once
(`importance_order`), and a width keeps the first k channels of that ranking.
`ChannelMasker` zeroes the other channels at the output of every layer that
produces them, which computes exactly what `materialize` computes after Torch-
Pruning physically removes them (zero channels contribute nothing downstream;
batch-norm of a zeroed channel yields its bias, which the mask zeroes again).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

Ratios = float | Mapping[str, float]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)  # normalise across channels: a mask is not a cut


@dataclass(frozen=True)
class Member:
    """One layer whose outputs carry a group's channels."""

    module: str
    idxs: tuple[int, ...]  # channel indices in this layer's output
    root_idxs: tuple[int, ...]  # the same channels, as indices of the group's root
    channel_dim: int  # 1 for conv/batch-norm outputs, -1 for linear outputs


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together (residual adds, concat, depthwise)."""

    key: str  # the root layer's name: stable across copies and rebuilds
    size: int
    members: tuple[Member, ...]
    nestable: bool = True  # False where a mask would not equal a cut (layer norm inside)
    layers: tuple[str, ...] = field(default=())  # every real layer the group touches
    unit: int = 1  # channels kept or cut together: an attention head's width for q/k/v


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def find_head(model: nn.Module, example: torch.Tensor) -> str:
    """The last Conv/Linear to run: its outputs are the classes and are never cut."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_a, n=n: order.append(n))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("the model has no Conv or Linear layer to prune")
    return order[-1]


def _is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is neither plain nor depthwise (RegNet, ResNeXt): 1 < groups < channels."""
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.out_channels


class _GroupedConvPruner(tp.pruner.function.ConvPruner):
    """Cuts a grouped convolution in whole groups.

    Torch-Pruning treats a grouped convolution as a plain one: a cut of its input
    channels keeps the first few columns of the weight whatever the indices, and the
    layer no longer runs (or no longer computes the same thing). Output channel j of
    group i reads input channels of group i only, so with as many input as output
    channels (RegNet's and ResNeXt's 3x3) its inputs and outputs are coupled like a
    depthwise convolution's, in units of the group width: removing whole groups on
    both sides leaves a smaller grouped convolution that computes exactly the kept
    channels. `channel_groups` gives the groups touching one a unit of the group width
    (`ChannelGroup.unit`) so that every width keeps whole groups.
    """

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        width = layer.out_channels // layer.groups
        gone = {i // width for i in idxs}
        if len(set(idxs)) != len(gone) * width:
            raise ValueError(f"a grouped convolution ({layer.groups} groups of {width}) is cut in whole groups, "
                             f"not channels {sorted(idxs)}")
        keep = [i for i in range(layer.out_channels) if i // width not in gone]
        # weight [out, in / groups, k...]: whole groups are whole rows, each row keeps its inputs
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.out_channels = layer.in_channels = len(keep)
        layer.groups -= len(gone)
        return layer

    prune_in_channels = prune_out_channels  # the same function: Torch-Pruning then couples inputs and outputs


class _DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's graph with grouped convolutions cut by `_GroupedConvPruner`
    (its custom-layer registry goes by class; a grouped conv is an ordinary Conv2d)."""

    def __init__(self) -> None:
        super().__init__()
        self._grouped = _GroupedConvPruner()
        # the sets Torch-Pruning reads to tell output cuts from input cuts (group checks, get_all_groups)
        self._out_channel_pruning_fn.add(self._grouped.prune_out_channels)
        self._in_channel_pruning_fn.add(self._grouped.prune_in_channels)

    def get_pruner_of_module(self, module: nn.Module):
        if _is_grouped(module) and module.in_channels == module.out_channels:
            return self._grouped
        return super().get_pruner_of_module(module)


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        return _DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)


def _is_out_handler(dep) -> bool:
    return "out_channels" in getattr(dep.handler, "__name__", "")


def channel_groups(model: nn.Module, example: torch.Tensor,
                   ignored: Iterable[str] = ()) -> list[ChannelGroup]:
    """Enumerate the prunable channel groups of `model` (head and `ignored` excluded)."""
    names = module_names(model)
    by_name = dict(model.named_modules())
    skip = {find_head(model, example), *ignored}
    dg = _dependency_graph(model, example)
    groups = []
    for g in dg.get_all_groups(ignored_layers=[by_name[n] for n in skip if n in by_name],
                               root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        root_module = g[0].dep.target.module
        key = names[root_module]
        members, layers, nestable, unit, whole = [], [], True, 1, False
        for item in g:
            mod = item.dep.target.module
            if mod not in names:
                continue  # a traced op (add, cat, relu), not a layer
            name = names[mod]
            if name not in layers:
                layers.append(name)
            if isinstance(mod, _NORM_TYPES):
                nestable = False
            if _is_grouped(mod):  # cut in whole groups of the convolution (see _GroupedConvPruner)
                unit = math.lcm(unit, mod.out_channels // mod.groups)
                # inputs and outputs in groups of different widths: no cut keeps it a valid convolution
                whole |= mod.in_channels != mod.out_channels
            if not _is_out_handler(item.dep):
                continue
            dim = -1 if isinstance(mod, (nn.Linear, nn.LayerNorm, nn.Embedding)) else 1
            idxs, roots = tuple(item.idxs), tuple(item.root_idxs or item.idxs)
            if any(m.module == name for m in members):
                continue
            members.append(Member(name, idxs, roots, dim))
        size = len(g[0].idxs)
        unit = math.lcm(unit, _head_unit(model, layers, [m.module for m in members]))
        if whole or size % unit:
            continue  # channels that cannot be cut in whole units: not a group, so always kept at full width
        groups.append(ChannelGroup(key, size, tuple(members), nestable, tuple(layers), unit))
    return groups


_RESHAPES = {torch.ops.aten.reshape.default, torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default,
             torch.reshape}


def _head_unit(model: nn.Module, layers: Sequence[str], outputs: Sequence[str] = ()) -> int:
    """Attention projections are reshaped into heads: their channels go in whole heads.

    A layer whose parent module declares `head_dim` (see `families.Attention`) is an
    attention projection, and so, in a lifted graph (where module attributes are gone),
    is a layer of `outputs` (the group cuts its output channels) whose output is reshaped
    with a constant last size into at least one more
    dimension (``[B, T, -1, 32]``: heads of 32). Cutting single channels there would regroup
    channels into different heads after the reshape, or leave a size the constant does
    not divide."""
    by_name = dict(model.named_modules())
    for name in layers:
        parent = by_name.get(name.rpartition(".")[0]) if "." in name else None
        if parent is not None and hasattr(parent, "head_dim"):
            return int(parent.head_dim)
    unit = 1
    if isinstance(model, torch.fx.GraphModule):
        wanted = set(outputs)
        for node in model.graph.nodes:
            if node.op != "call_module" or node.target not in wanted \
                    or not isinstance(by_name.get(node.target), nn.Linear):  # channels last: a split of them
                continue
            for user in node.users:
                if user.op != "call_function" or user.target not in _RESHAPES or len(user.args) < 2:
                    continue
                shape = user.args[1]
                if isinstance(shape, (list, tuple)) and len(shape) >= 3 and isinstance(shape[-1], int) \
                        and shape[-1] > 1:
                    unit = math.lcm(unit, int(shape[-1]))
    return unit


_SOFTMAX = {torch.ops.aten._softmax.default, torch.ops.aten.softmax.int,
            torch.ops.aten._safe_softmax.default, torch.ops.aten.scaled_dot_product_attention.default,
            torch.nn.functional.softmax, torch.nn.functional.scaled_dot_product_attention}


def has_attention(model: nn.Module) -> bool:
    """Whether `model` computes attention: a module declaring `head_dim` (`families.Attention`,
    timm's and torchvision's attention blocks), or, in a lifted graph, a softmax or fused
    attention call (a classifier's graph ends in logits, so a softmax inside is attention)."""
    if any(hasattr(m, "head_dim") or isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return True
    graphs = [m for m in model.modules() if isinstance(m, torch.fx.GraphModule)]
    return any(n.op == "call_function" and n.target in _SOFTMAX for g in graphs for n in g.graph.nodes)


def keep_count(size: int, ratio: float, round_to: int = 1, unit: int = 1) -> int:
    """Channels kept at `ratio`, rounded to the hardware multiple (never 0, never > size).

    Odd channel counts can run slower than larger aligned ones, so counts are
    rounded to the profile's multiple (8 on most CPUs and GPUs). Groups cut in
    units (attention heads) keep whole units instead."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"width ratio must be in (0, 1] but got {ratio}")
    if ratio == 1.0:  # the whole group, whatever its count: 40 channels stay 40 under round_to 16
        return size
    if unit > 1:
        return unit * min(size // unit, max(1, round(ratio * size / unit)))
    if size <= round_to:
        return size
    k = max(round_to, round_to * round(ratio * size / round_to))
    return min(size, k)


def _ratio_for(ratios: Ratios, key: str) -> float:
    return float(ratios) if isinstance(ratios, (int, float)) else float(ratios.get(key, 1.0))


def importance_order(model: nn.Module, example: torch.Tensor,
                     groups: Sequence[ChannelGroup]) -> dict[str, tuple[int, ...]]:
    """Rank each group's channels, most important first (group L1 magnitude, as in OFA
    and Torch-Pruning's GroupMagnitudeImportance)."""
    dg = _dependency_graph(model, example)
    by_name = dict(model.named_modules())
    imp = tp.importance.GroupMagnitudeImportance(p=1)
    order = {}
    for g in groups:
        root = by_name[g.key]
        fn = dg.get_pruner_of_module(root).prune_out_channels
        group = dg.get_pruning_group(root, fn, idxs=list(range(g.size)))
        with torch.no_grad():
            scores = imp(group)
        if scores is None:
            order[g.key] = tuple(range(g.size))
        elif g.unit > 1:  # rank whole heads, keep channel order inside a head
            heads = torch.argsort(scores.view(-1, g.unit).sum(1), descending=True, stable=True)
            order[g.key] = tuple(int(h) * g.unit + j for h in heads for j in range(g.unit))
        else:
            order[g.key] = tuple(int(i) for i in torch.argsort(scores, descending=True, stable=True))
    return order


def kept_channels(group: ChannelGroup, ratio: float, order: Mapping[str, Sequence[int]] | None,
                  round_to: int = 1) -> list[int]:
    """Root indices kept at `ratio`: a prefix of the importance order."""
    ranked = list(order[group.key]) if order and group.key in order else list(range(group.size))
    return sorted(ranked[: keep_count(group.size, ratio, round_to, group.unit)])


def materialize(model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup],
                ratios: Ratios, order: Mapping[str, Sequence[int]] | None = None,
                round_to: int = 1) -> nn.Module:
    """A dense copy of `model` with the channels outside each group's kept prefix removed."""
    dense = copy.deepcopy(model)
    for m in dense.modules():  # a deep copy carries hooks along (e.g. a ChannelMasker's)
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    dg = _dependency_graph(dense, example)
    by_name = dict(dense.named_modules())
    for g in groups:
        ratio = _ratio_for(ratios, g.key)
        if ratio >= 1.0:
            continue
        keep = set(kept_channels(g, ratio, order, round_to))
        drop = [i for i in range(g.size) if i not in keep]
        if not drop:
            continue
        root = by_name[g.key]
        fn = dg.get_pruner_of_module(root).prune_out_channels
        group = dg.get_pruning_group(root, fn, idxs=drop)
        if dg.check_pruning_group(group):
            group.prune()
    return dense


class ChannelMasker:
    """Forward hooks that zero the channels outside the current width's prefixes.

    `set_width(r)` (a float for every group, or a mapping key -> ratio) switches
    the sub-network in place; `set_width(1.0)` is the full network, bit for bit.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup],
                 order: Mapping[str, Sequence[int]] | None = None, round_to: int = 1) -> None:
        self.groups = {g.key: g for g in groups if g.nestable}
        self.round_to = round_to
        self.ratios: Ratios = 1.0
        by_name = dict(model.named_modules())
        # per layer: (group key, rank of each output channel in its group's order, idxs, dim)
        self._entries: dict[str, list[tuple[str, torch.Tensor, torch.Tensor, int, int]]] = {}
        for g in self.groups.values():
            ranked = list(order[g.key]) if order and g.key in order else list(range(g.size))
            rank = torch.empty(g.size, dtype=torch.long)
            rank[torch.tensor(ranked)] = torch.arange(g.size)
            for m in g.members:
                width = _output_width(by_name[m.module], m)
                self._entries.setdefault(m.module, []).append(
                    (g.key, rank[torch.tensor(m.root_idxs)], torch.tensor(m.idxs), m.channel_dim, width))
        self._active: dict[str, list[tuple[torch.Tensor, int]]] = {}
        self._hooks = [by_name[name].register_forward_hook(self._hook(name)) for name in self._entries]

    def _hook(self, name: str):
        def apply(_module, _inputs, output):
            for mask, dim in self._active.get(name, ()):
                shape = [1] * output.dim()
                shape[dim] = -1
                output = output * mask.to(output.dtype).view(shape)
            return output

        return apply

    def set_width(self, ratios: Ratios) -> None:
        self.ratios = ratios
        active: dict[str, list[tuple[torch.Tensor, int]]] = {}
        for name, entries in self._entries.items():
            for key, ranks, idxs, dim, width in entries:
                ratio = _ratio_for(ratios, key)
                if ratio >= 1.0:
                    continue
                g = self.groups[key]
                k = keep_count(g.size, ratio, self.round_to, g.unit)
                mask = torch.ones(width, dtype=torch.bool)
                mask[idxs] = ranks < k
                active.setdefault(name, []).append((mask, dim))
        self._active = active

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _output_width(module: nn.Module, member: Member) -> int:
    for attr in ("out_channels", "out_features", "num_features", "embedding_dim"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return max(member.idxs) + 1


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass at the example's batch size."""
    was_training = model.training
    model.eval()
    try:
        macs, _ = tp.utils.count_ops_and_params(model, example)
    finally:
        model.train(was_training)
    return int(macs)
