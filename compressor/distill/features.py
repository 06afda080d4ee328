"""Feature taps: run a network and also return its last feature map before pooling.

Feature losses (FitNets, SP, RKD, ICKD) need that map, but the networks here
come in three kinds and none of them returns it:

- a lifted `torch.fx.GraphModule` (teacher-derived TA and its sizes): the map is
  an aten node (often `relu(add(...))`, not a layer), so we copy the graph with
  that node as a second output; the copy shares every submodule and tensor with
  the original, so masks, hooks and `functional_call` see the same weights;
- an ordinary module (families.py): a forward hook on the last layer whose
  output is a spatial map with as many channels as the classifier takes
  (`CNNFamily.features`, the transformer's final norm: tokens are moved to
  channels-first);
- anything else (a TorchScript teacher, say): the classifier's input, the
  pooled (B, C) embedding, through a pre-hook; where even that fails, none.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

from ..prune import find_head

__all__ = ["FeatureTap"]

# ops between the last feature map and the classifier: global pooling and reshapes
_POOL_OR_RESHAPE = ("mean", "avg_pool", "adaptive_avg", "max_pool", "amax", "flatten", "view", "reshape",
                    "squeeze", "_unsafe_view", "permute", "transpose", "clone", "contiguous")


class _Slot:
    """Where a hook drops the tensor it saw, only while a tap call is running.

    The hook lives on the network, so copies of the network (deepcopy in
    materialize, MAC counting) copy the slot too: they get an empty, unarmed one
    rather than the tap with its model and a non-leaf tensor."""

    __slots__ = ("armed", "value")

    def __init__(self) -> None:
        self.armed = False
        self.value: Tensor | None = None

    def __deepcopy__(self, memo: dict) -> "_Slot":
        return _Slot()

    def output_hook(self, _m: nn.Module, _inp: object, out: Tensor) -> None:
        if self.armed:
            self.value = out

    def input_hook(self, _m: nn.Module, inp: tuple[Tensor, ...]) -> None:
        if self.armed:
            self.value = inp[0]


def _is_pool_or_reshape(node: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    name = str(node.target).lower()
    return any(op in name for op in _POOL_OR_RESHAPE)


class FeatureTap:
    """Call as ``tap(x, tensors=None) -> (logits, features | None)``.

    `tensors` (name -> tensor) runs the network functionally on those weights
    (`torch.func.functional_call`), which is how nested sizes borrow the
    family's parameters. `kind` says where features come from: "graph", "hook",
    "embedding" or "none" (features disabled or unavailable)."""

    def __init__(self, model: nn.Module, example: Tensor, features: bool = True) -> None:
        self.model = model
        self.kind = "none"
        self._runner: nn.Module = model
        self._channels_last = False
        self._slot = _Slot()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if features:
            try:
                self._setup(example)
            except Exception:  # opaque (scripted) networks: logits only
                self.remove()
                self.kind, self._runner = "none", model

    # ------------------------------------------------------------------ set-up
    def _setup(self, example: Tensor) -> None:
        head_name = find_head(self.model, example)
        head = self.model.get_submodule(head_name)
        width = int(getattr(head, "in_features", 0) or getattr(head, "in_channels", 0))
        if isinstance(self.model, fx.GraphModule) and self._setup_graph(head_name):
            self.kind = "graph"
        elif self._setup_hook(example, head_name, width):
            self.kind = "hook"
        else:
            self._handles.append(head.register_forward_pre_hook(self._slot.input_hook))
            self.kind = "embedding"
        with torch.no_grad():
            _, f = self(example)
        if f is not None and f.dim() >= 3 and f.shape[1] != width and f.shape[-1] == width:
            self._channels_last = True  # tokens (B, T, D): channels to dim 1

    def _setup_graph(self, head_name: str) -> bool:
        gm: fx.GraphModule = self.model  # type: ignore[assignment]
        heads = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == head_name]
        if len(heads) != 1 or not heads[0].args or not isinstance(heads[0].args[0], fx.Node):
            return False
        node, pooled = heads[0].args[0], False
        while _is_pool_or_reshape(node) and isinstance(node.args[0], fx.Node):
            pooled = pooled or any(op in str(node.target).lower() for op in ("mean", "pool", "amax"))
            node = node.args[0]
        if not pooled:
            return False
        graph, copies = fx.Graph(), {}
        logits = graph.graph_copy(gm.graph, copies)  # returns the original output value
        graph.output((logits, copies[node]))
        self._runner = fx.GraphModule(gm, graph)  # shares submodules and tensors with gm
        return True

    def _setup_hook(self, example: Tensor, head_name: str, width: int) -> bool:
        seen: list[tuple[str, tuple[int, ...]]] = []
        head_ran = False

        def record(name: str):
            def hook(_m: nn.Module, _inp: object, out: object) -> None:
                if not head_ran and isinstance(out, Tensor):
                    seen.append((name, tuple(out.shape)))
            return hook

        def mark(*_: object) -> None:
            nonlocal head_ran
            head_ran = True

        handles = [m.register_forward_hook(record(n)) for n, m in self.model.named_modules() if n]
        handles.append(self.model.get_submodule(head_name).register_forward_pre_hook(mark))
        try:
            with torch.no_grad():
                self.model(example)
        finally:
            for h in handles:
                h.remove()
        for name, shape in reversed(seen):  # the last map that is not yet pooled to one position
            if len(shape) >= 3 and width in (shape[1], shape[-1]) and math.prod(shape[2:]) > 1 \
                    and name != head_name:
                self._handles.append(self.model.get_submodule(name).register_forward_hook(self._slot.output_hook))
                return True
        return False

    def to(self, device: torch.device | str) -> "FeatureTap":
        """Move the network and the graph copy that runs it: the copy holds its own references to the
        root's buffers, which `nn.Module.to` replaces rather than moves in place."""
        self.model.to(device)
        self._runner.to(device)
        return self

    def remove(self) -> None:
        """Detach the hooks this tap put on the network."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------- call
    def __call__(self, x: Tensor, tensors: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        self._slot.armed = True
        try:
            out = self._runner(x) if tensors is None else functional_call(self._runner, dict(tensors), (x,))
        finally:
            self._slot.armed = False
        if self.kind == "graph":
            logits, features = out
        else:
            logits, features, self._slot.value = out, self._slot.value, None
        if features is not None and self._channels_last:
            features = features.movedim(-1, 1)
        return logits, features
