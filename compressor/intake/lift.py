"""Lift an exported graph into real layers so Torch-Pruning can cut it.

`torch.export` and TorchScript teachers reach us as graphs of aten calls on raw
tensors (`aten.conv2d(x, w, b, ...)`); Torch-Pruning only recognises real
`nn.Conv2d`/`nn.Linear`/`nn.BatchNorm2d` modules. `lift_exported` rewrites each
such call into a `call_module` node that owns the same tensors, so outputs stay
identical and the result prunes like a hand-written network. Ops we do not lift
stay aten calls (they are traced as element-wise/shape ops by Torch-Pruning).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import fx, nn

aten = torch.ops.aten


def _tensor(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj: Any = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    raise _NotLiftable(f"argument {node} is not a stored tensor")


class _NotLiftable(Exception):
    pass


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    if t is None:
        return None
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone())


def _rank(node: fx.Node) -> int | None:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _arg(node: fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _make_conv(gm, node) -> nn.Module:
    if node.target is aten.convolution.default:
        x, w, b, stride, padding, dilation, transposed, _, groups = node.args[:9]
        if transposed:
            raise _NotLiftable("transposed convolution")
    else:
        x, w = node.args[:2]
        b = _arg(node, 2, "bias", None)
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
    weight, bias = _tensor(gm, w), _tensor(gm, b)
    cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[weight.dim()]
    conv = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
               padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
    conv.weight = _param(weight)
    if bias is not None:
        conv.bias = _param(bias)
    return conv


def _make_linear(gm, node) -> nn.Module:
    weight, bias = _tensor(gm, node.args[1]), _tensor(gm, _arg(node, 2, "bias", None))
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight = _param(weight)
    if bias is not None:
        lin.bias = _param(bias)
    return lin


def _make_batchnorm(gm, node) -> nn.Module:
    if node.target is aten.batch_norm.default:
        _, w, b, rm, rv, _training, momentum, eps = node.args[:8]
    else:  # _native_batch_norm_legit_no_training(input, w, b, rm, rv, momentum, eps)
        _, w, b, rm, rv, momentum, eps = node.args[:7]
    weight, bias, mean, var = (_tensor(gm, a) for a in (w, b, rm, rv))
    if mean is None or var is None:
        raise _NotLiftable("batch norm without running statistics")
    rank = _rank(node.args[0]) or 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = cls(mean.shape[0], eps=eps, momentum=momentum, affine=weight is not None)
    if weight is not None:
        bn.weight, bn.bias = _param(weight), _param(bias)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    return bn


def _make_layernorm(gm, node) -> nn.Module:
    shape = node.args[1]
    weight = _tensor(gm, _arg(node, 2, "weight", None))
    bias = _tensor(gm, _arg(node, 3, "bias", None))
    eps = _arg(node, 4, "eps", 1e-5)
    ln = nn.LayerNorm(shape, eps=eps, elementwise_affine=weight is not None, bias=bias is not None)
    if weight is not None:
        ln.weight = _param(weight)
    if bias is not None:
        ln.bias = _param(bias)
    return ln


def _make_embedding(gm, node) -> nn.Module:
    weight = _tensor(gm, node.args[0])
    emb = nn.Embedding(weight.shape[0], weight.shape[1])
    emb.weight = _param(weight)
    return emb


_LIFTERS: dict[Any, tuple[Callable, tuple[int, ...]]] = {
    # target: (factory, positions of the node's args that are activations)
    aten.conv1d.default: (_make_conv, (0,)),
    aten.conv2d.default: (_make_conv, (0,)),
    aten.conv3d.default: (_make_conv, (0,)),
    aten.convolution.default: (_make_conv, (0,)),
    aten.linear.default: (_make_linear, (0,)),
    aten.batch_norm.default: (_make_batchnorm, (0,)),
    aten._native_batch_norm_legit_no_training.default: (_make_batchnorm, (0,)),
    aten.layer_norm.default: (_make_layernorm, (0,)),
    aten.embedding.default: (_make_embedding, (1,)),
}
_TUPLE_RESULT = {aten._native_batch_norm_legit_no_training.default}


def _module_name(node: fx.Node, taken: set[str]) -> str:
    """Name the lifted layer after the tensor it owns: `layer1.0.conv1.weight` -> `layer1_0_conv1`."""
    w = node.args[1] if node.target is not aten.embedding.default else node.args[0]
    base = w.target.rsplit(".", 1)[0] if isinstance(w, fx.Node) and w.op == "get_attr" else node.name
    base = re.sub(r"\W", "_", base) or "layer"
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def lift_exported(gm: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """Return (lifted module, number of ops left unlifted that own tensors).

    The input is `ExportedProgram.module()`. Shape guards (`_guards_fn`) and the
    pytree input wrapper are dropped so the lifted module accepts any batch size.
    """
    root = nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    taken: set[str] = set()
    unlifted = 0

    def copy_attr(target: str) -> None:
        obj: Any = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        name = target.replace(".", "_")
        if not hasattr(root, name):
            if isinstance(obj, nn.Parameter):
                root.register_parameter(name, obj)
            elif isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.requires_grad:
                # a weight outside any lifted layer (ConvNeXt's layer scale, a ViT's position embedding
                # and class token), which a TorchScript teacher hands over as a plain tensor: a buffer
                # would freeze it in distillation and hide it from Torch-Pruning, which then cannot cut
                # the channels it scales (ConvNeXt's whole residual stream stayed at full width)
                root.register_parameter(name, nn.Parameter(obj.detach().clone()))
            else:
                root.register_buffer(name, obj)
        return name

    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target.startswith("_guards"):
            continue
        if node.op == "get_attr":
            continue  # materialised lazily, only if some unlifted op still uses it
        if node.op == "call_function" and node.target in _LIFTERS:
            factory, act_pos = _LIFTERS[node.target]
            try:
                module = factory(gm, node)
            except _NotLiftable:
                module = None
            if module is not None:
                name = _module_name(node, taken)
                root.add_module(name, module)
                acts = [env[node.args[i]] for i in act_pos]
                new = graph.call_module(name, tuple(acts))
                new.meta = dict(node.meta)
                if node.target in _TUPLE_RESULT:
                    new.meta["lifted_tuple"] = True
                env[node] = new
                continue
            unlifted += 1

        def remap(a: Any) -> Any:
            if isinstance(a, fx.Node) and a.op == "get_attr" and a not in env:
                env[a] = graph.get_attr(copy_attr(a.target))
            return env[a] if isinstance(a, fx.Node) else a

        if node.op == "call_function" and node.target.__name__ == "getitem" and \
                env.get(node.args[0]) is not None and env[node.args[0]].meta.get("lifted_tuple"):
            # the no-training batch-norm returned (out, mean, rstd); the module returns out only
            if node.args[1] != 0:
                raise _NotLiftable("batch-norm statistics output is used")
            env[node] = env[node.args[0]]
            continue
        if node.op == "output":
            # exported programs return a flat tuple; a classifier teacher returns one tensor
            outs = [remap(a) for a in _walk_args(node.args[0])]
            graph.output(outs[0] if len(outs) == 1 else tuple(outs))
            continue
        new = graph.node_copy(node, lambda a: remap(a) if isinstance(a, fx.Node) else a) \
            if node.op != "placeholder" else graph.placeholder(node.target)
        if node.op == "placeholder":
            new.meta = dict(node.meta)
        env[node] = new

    _out_of_place(graph)
    lifted = fx.GraphModule(root, graph, class_name="LiftedModule")
    lifted.graph.eliminate_dead_code()
    lifted.recompile()
    # freshly built layers start in train mode; an exported program is an inference graph
    lifted.eval()
    return lifted, unlifted


def _out_of_place(graph: fx.Graph) -> int:
    """Rewrite in-place aten ops (``relu_``, ``hardswish_``, ``x += y`` as ``add_``) out of place
    wherever nobody else can see the mutation; returns how many were rewritten.

    Exported zoo models are full of them (``inplace=True`` activations, torchvision's
    ``out += identity``). fx never deletes an in-place op as dead code (it mutates its
    input), so removing a residual branch would leave the branch's layers in the graph,
    still reading the skip tensor but invisible to Torch-Pruning, which traces from the
    output: a cut of that tensor then misses them. And a residual add spelt ``add_`` is
    not recognised as one. The rewrite is exact when the mutated tensor is a fresh
    result (not a view that aliases another) used by the in-place op alone.
    """
    rewritten = 0
    for node in list(graph.nodes):
        op = node.target
        if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or not node.args:
            continue
        name = op._schema.name.split("::")[-1]
        first = op._schema.arguments[0] if op._schema.arguments else None
        if not name.endswith("_") or name.startswith("_") or first is None or first.alias_info is None \
                or not first.alias_info.is_write:
            continue
        functional = getattr(getattr(aten, name[:-1], None), op._overloadname, None)
        target = node.args[0]
        if functional is None or not isinstance(target, fx.Node) or len(target.users) != 1 \
                or not _fresh(target):
            continue
        node.target = functional
        rewritten += 1
    return rewritten


def _fresh(node: fx.Node) -> bool:
    """Whether a mutation of `node`'s tensor is seen by nobody but its users: a lifted layer's output,
    an aten op's new tensor, or a view (GhostNet's ``cat(...)[:, :n]``) of such a tensor seen by the view alone."""
    if node.op == "call_module":
        return True
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    returns = node.target._schema.returns
    if len(returns) != 1:
        return False
    if returns[0].alias_info is None:
        return True
    base = node.args[0] if node.args else None
    return isinstance(base, fx.Node) and len(base.users) == 1 and _fresh(base)


def _walk_args(args: Any):
    if isinstance(args, (list, tuple)):
        for a in args:
            yield from _walk_args(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _walk_args(a)
    else:
        yield args
