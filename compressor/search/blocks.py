"""Residual blocks that can be cut out of a lifted teacher graph (the depth half of `teacher_scaled`).

On CPUs at batch 1 latency follows layer count more than width, so a
teacher-derived space needs depth, not only width. A residual block computes
``y = x + f(x)``; where ``x`` and ``f(x)`` have the same shape, replacing ``y`` by ``x``
removes ``f`` while every later layer still receives the shape it was built for.
That is the only rewrite done here: blocks whose skip path changes shape
(a strided projection) are left alone, so the result is always runnable.

Blocks are named by their add node, which is stable across deep copies of the graph.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import fx, nn

_ADD_TARGETS = {torch.ops.aten.add.Tensor, operator.add, torch.add}


@dataclass(frozen=True)
class ResidualBlock:
    """``add = skip + branch(skip)``; `layers` are the modules that only the branch uses."""

    add: str
    skip: str
    layers: tuple[str, ...]


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


def find_residual_blocks(gm: fx.GraphModule, example: torch.Tensor) -> list[ResidualBlock]:
    """Every add whose one input is an ancestor of the other, with equal shapes, in graph order."""
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
    return blocks


class _AddRecorder(fx.Interpreter):
    """Runs the graph once and keeps, per watched add node, the norms of its skip and branch inputs."""

    def __init__(self, gm: fx.GraphModule, blocks: Iterable[ResidualBlock]) -> None:
        super().__init__(gm)
        self.skips = {b.add: b.skip for b in blocks}
        self.shares: dict[str, float] = {}

    def run_node(self, n: fx.Node):  # type: ignore[override]
        out = super().run_node(n)
        if n.name in self.skips:
            a, b = (self.env[x] for x in n.args)
            skip, branch = (a, b) if n.args[0].name == self.skips[n.name] else (b, a)
            norms = [t.flatten(1).norm(dim=1) for t in (skip, branch)]
            self.shares[n.name] = float((norms[1] / norms[0].clamp_min(1e-12)).mean())
        return out


def branch_shares(gm: fx.GraphModule, blocks: Iterable[ResidualBlock], inputs: torch.Tensor) -> dict[str, float]:
    """How much each block's branch adds to its skip path: mean over `inputs` of ‖f(x)‖ / ‖x‖.

    A block whose branch barely moves the residual stream is the one whose removal changes the
    network least (the signal behind block-dropping studies of residual networks: Veit et al. 2016
    found residual networks behave like ensembles of shallower paths, few of which matter). One
    forward pass, in eval mode, without gradients."""
    rec = _AddRecorder(gm, blocks)
    _observe(rec, inputs)
    return rec.shares


def drop_blocks(gm: fx.GraphModule, adds: Iterable[str], example: torch.Tensor | None = None) -> fx.GraphModule:
    """A copy of `gm` with each named residual add replaced by its skip input.

    Dead nodes, the submodules and stored tensors only they used are deleted, so
    parameter counts shrink too. Names that are no longer in the graph (an inner
    block of an outer block already removed) are ignored. With `example`, the
    result is run once to prove it still works.
    """
    out = copy.deepcopy(gm)
    attrs_before = {n.target for n in out.graph.nodes if n.op == "get_attr"}
    for name in adds:
        anc = _ancestors(out.graph)  # recomputed: an earlier removal may have deleted this add
        node = next((n for n in anc if n.name == name), None)
        if node is None:
            continue
        a, b = node.args
        node.replace_all_uses_with(a if a in anc[b] else b)
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
