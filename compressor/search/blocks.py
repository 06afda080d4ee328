"""Blocks that can be cut out of a lifted teacher graph (the depth half of `teacher_scaled`).

On CPUs at batch 1 latency follows layer count more than width, so a
teacher-derived space needs depth, not only width. A residual block computes
``y = x + f(x)``; where ``x`` and ``f(x)`` have the same shape, replacing ``y`` by ``x``
removes ``f`` while every later layer still receives the shape it was built for.
Blocks whose skip path changes shape (a strided projection) are left alone, so the
result is always runnable.

A network without residual blocks (SqueezeNet's fire modules, VGG- or MobileNet-v1-style
stacks) can only be made shallower by removing a *plain* block: a stretch of layers
that reads one tensor and hands on one tensor of the same shape, nothing inside it
used from outside. Replacing its output by its input is the same rewrite, without a
skip path to carry the signal meanwhile, so distillation has more to repair; it is
searched only where no residual block exists, and only on networks with normalisation
layers (`_normalised`).

Blocks are named by their last node (the add, for a residual block), which is stable
across deep copies of the graph.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import fx, nn

_ADD_TARGETS = {torch.ops.aten.add.Tensor, operator.add, torch.add}


@dataclass(frozen=True)
class ResidualBlock:
    """``add = skip + branch(skip)``; `layers` are the modules that only the branch uses.
    A plain block (`residual` False) is ``add = f(skip)`` with the shape of `skip`: `add` names
    its last node, and removing it hands `skip` on in its place."""

    add: str
    skip: str
    layers: tuple[str, ...]
    residual: bool = True


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and notes every node's output shape (without touching node.meta)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):  # type: ignore[override]
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape)
        return out


def _observe(rec: fx.Interpreter, inputs: torch.Tensor) -> None:
    """Run `rec`'s graph once in eval mode without gradients, leaving its mode as it was."""
    gm = rec.module
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            rec.run(inputs)
    finally:
        gm.train(was_training)


def _shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    rec = _ShapeRecorder(gm)
    _observe(rec, example)
    return rec.shapes


def _ancestors(graph: fx.Graph) -> dict[fx.Node, set[fx.Node]]:
    anc: dict[fx.Node, set[fx.Node]] = {}
    for n in graph.nodes:  # nodes are in topological order
        s: set[fx.Node] = set()
        for a in n.all_input_nodes:
            s.add(a)
            s |= anc[a]
        anc[n] = s
    return anc


def _has_weights(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and any(True for _ in gm.get_submodule(node.target).parameters())


def _has_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A convolution or linear layer (a weight of two or more dimensions), not a norm alone."""
    return node.op == "call_module" and any(p.dim() >= 2 for p in gm.get_submodule(node.target).parameters())


def find_residual_blocks(gm: fx.GraphModule, example: torch.Tensor) -> list[ResidualBlock]:
    """Every add whose one input is an ancestor of the other, with equal shapes, in graph order;
    on a graph with no such add, its plain blocks (`_plain_blocks`) instead."""
    shapes = _shapes(gm, example)
    anc = _ancestors(gm.graph)
    blocks = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _ADD_TARGETS or node.kwargs.get("alpha", 1) != 1:
            continue
        if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        a, b = node.args
        skip, branch = (a, b) if a in anc[b] else (b, a) if b in anc[a] else (None, None)
        if skip is None or not (shapes.get(skip.name) == shapes.get(branch.name) == shapes.get(node.name)):
            continue
        inside = [n for n in (anc[branch] | {branch}) if skip in anc[n]]
        inside_set = set(inside) | {node}
        # a module whose output also feeds something outside the block survives its removal
        layers = tuple(sorted(n.target for n in inside if n.op == "call_module"
                              and all(u in inside_set for u in n.users)))
        if any(_has_weights(gm, n) for n in inside):
            blocks.append(ResidualBlock(node.name, skip.name, layers))
    return blocks or (_plain_blocks(gm, shapes, anc) if _normalised(gm) else [])


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _normalised(gm: fx.GraphModule) -> bool:
    """Whether the network has normalisation layers. Only then are plain blocks offered: a norm
    after the removed stretch re-scales what it hands on (BatchNorm statistics are recalibrated
    on every size). SqueezeNet 1.1 has none, and with its four shape-keeping fire modules removed
    its nested family never trained (every size at chance after 12 epochs, float32 and bfloat16
    alike; BENCHMARKS.md "Zoo teachers trained in bfloat16; shape-keeping stretches as blocks")."""
    return any(isinstance(m, _NORMS) for m in gm.modules())


def _plain_blocks(gm: fx.GraphModule, shapes: dict[str, tuple[int, ...]],
                  anc: dict[fx.Node, set[fx.Node]]) -> list[ResidualBlock]:
    """The shortest stretches ``skip -> ... -> end`` of feature maps (3+ dimensions) where `end` has
    the shape of `skip`, every node between reads only `skip`, stored tensors and each other, only
    `end` is read from outside, and a convolution or linear layer is among them: removing one
    leaves every other layer its input shape. Of the stretches from one `skip` (conv, conv-norm,
    conv-norm-activation) the longest is kept: one block per layer, not three.

    Stretches can overlap: in SqueezeNet, fire module to fire module (128 channels in and out) and
    squeeze layer to squeeze layer (16). Where two overlap, the one with the wider tensor at its
    ends is kept: a removal then hands on the tensor the network carries between its modules,
    not a bottleneck inside one, and no kept block's input is removed with another. In graph order."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    by_skip: dict[fx.Node, tuple[fx.Node, set[fx.Node]]] = {}
    for end in gm.graph.nodes:
        shape = shapes.get(end.name)
        if end.op in ("placeholder", "get_attr", "output") or shape is None or len(shape) < 3:
            continue
        entries = sorted((a for a in anc[end] if a.op != "get_attr" and shapes.get(a.name) == shape),
                         key=order.__getitem__, reverse=True)
        for skip in entries:  # the nearest entry that closes a block
            inside = {n for n in anc[end] if skip in anc[n]} | {end}
            reads_outside = any(i is not skip and i not in inside and i.op != "get_attr"
                                for n in inside for i in n.all_input_nodes)
            read_from_outside = any(u not in inside for n in inside if n is not end for u in n.users)
            if reads_outside or read_from_outside:
                continue
            if any(_has_layer(gm, n) for n in inside):
                by_skip[skip] = (end, inside)  # later ends win
                break
    kept: list[tuple[fx.Node, fx.Node, set[fx.Node]]] = []
    widest_first = sorted(by_skip.items(), key=lambda kv: (-math.prod(shapes[kv[0].name]), order[kv[1][0]]))
    for skip, (end, inside) in widest_first:
        interior = inside - {end}
        if any(interior & (other | {other_skip}) or (other - {other_end}) & (inside | {skip})
               for other_skip, other_end, other in kept):
            continue
        kept.append((skip, end, inside))
    kept.sort(key=lambda b: order[b[1]])
    return [ResidualBlock(end.name, skip.name, tuple(sorted(n.target for n in inside if n.op == "call_module")),
                          residual=False) for skip, end, inside in kept]


class _ChangeRecorder(fx.Interpreter):
    """Runs the graph once and keeps, per watched block, how far its output moved from its input."""

    def __init__(self, gm: fx.GraphModule, blocks: Iterable[ResidualBlock]) -> None:
        super().__init__(gm)
        self.skips = {b.add: b.skip for b in blocks}
        self.entries = set(self.skips.values())
        self.inputs: dict[str, torch.Tensor] = {}  # held here: the interpreter frees a value after its last use
        self.shares: dict[str, float] = {}

    def run_node(self, n: fx.Node):  # type: ignore[override]
        out = super().run_node(n)
        if n.name in self.entries:
            self.inputs[n.name] = out
        if n.name in self.skips:
            skip = self.inputs[self.skips[n.name]]
            norms = [t.flatten(1).norm(dim=1) for t in (skip, out - skip)]
            self.shares[n.name] = float((norms[1] / norms[0].clamp_min(1e-12)).mean())
        return out


def branch_shares(gm: fx.GraphModule, blocks: Iterable[ResidualBlock], inputs: torch.Tensor) -> dict[str, float]:
    """How much each block changes what flows through it: mean over `inputs` of ‖y - x‖ / ‖x‖
    (for a residual block ``y = x + f(x)``, that is ‖f(x)‖ / ‖x‖).

    A block whose branch barely moves the residual stream is the one whose removal changes the
    network least (the signal behind block-dropping studies of residual networks: Veit et al. 2016
    found residual networks behave like ensembles of shallower paths, few of which matter). One
    forward pass, in eval mode, without gradients."""
    rec = _ChangeRecorder(gm, blocks)
    _observe(rec, inputs)
    return rec.shares


def drop_blocks(gm: fx.GraphModule, adds: Iterable[str], example: torch.Tensor | None = None,
                skips: Mapping[str, str] | None = None) -> fx.GraphModule:
    """A copy of `gm` with each named block replaced by its input: a residual add by its skip
    input, a plain block (named in `skips`: its last node -> its input node) by its input.

    Dead nodes, the submodules and stored tensors only they used are deleted, so
    parameter counts shrink too. Names that are no longer in the graph (an inner
    block of an outer block already removed) are ignored. With `example`, the
    result is run once to prove it still works.
    """
    out = copy.deepcopy(gm)
    skips = dict(skips or {})
    attrs_before = {n.target for n in out.graph.nodes if n.op == "get_attr"}
    handed_on: dict[str, str] = {}  # a removed block's last node -> the node that took its place
    for name in adds:
        anc = _ancestors(out.graph)  # recomputed: an earlier removal may have deleted this add
        nodes = {n.name: n for n in anc}
        node = nodes.get(name)
        if node is None:
            continue
        if name in skips:  # a plain block; its input may itself be the end of a block removed before
            entry = skips[name]
            while entry in handed_on:
                entry = handed_on[entry]
            skip = nodes[entry]
        else:
            a, b = node.args
            skip = a if a in anc[b] else b
        handed_on[name] = skip.name
        node.replace_all_uses_with(skip)
        out.graph.erase_node(node)
        # the whole branch must go: a layer left behind still reads the skip tensor, but Torch-Pruning
        # (tracing back from the output) does not see it, so a later cut of that tensor misses it. fx keeps
        # random ops as impure: an exported timm model's dropout(p, train=False) would keep its branch alive
        out.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure(impure_random=False))
    out.delete_all_unused_submodules()
    used = {n.target for n in out.graph.nodes if n.op == "get_attr"}
    for target in attrs_before - used:  # root-level tensors of ops that were removed
        owner, _, attr = target.rpartition(".")
        mod: nn.Module = out.get_submodule(owner) if owner else out
        if hasattr(mod, attr):
            delattr(mod, attr)
    out.recompile()
    if example is not None:
        was_training = out.training
        out.eval()
        with torch.no_grad():
            out(example)
        out.train(was_training)
    return out


_RESHAPES = {torch.ops.aten.reshape.default, torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default,
             "reshape", "view"}


def head_units(gm: fx.GraphModule) -> dict[str, int]:
    """Layers whose output is split into heads, with the head width: ``{q_proj: 8}``.

    An attention projection's output is reshaped to (..., heads, head_dim); cutting
    single channels there would change which channels form a head (and break a
    reshape that fixes head_dim). A lifted graph has lost the module attribute that
    says so (`families.Attention.head_dim`), but the reshape is still in the graph.
    """
    units: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        width = getattr(gm.get_submodule(node.target), "out_features", None)
        for user in node.users:
            if user.target not in _RESHAPES or len(user.args) < 2:
                continue
            shape = user.args[1] if isinstance(user.args[1], (list, tuple)) else user.args[1:]
            last = shape[-1] if shape else None
            if width and isinstance(last, int) and 1 < last < width and width % last == 0 and len(shape) >= 3:
                units[node.target] = last
    return units
