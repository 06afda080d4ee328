"""Per-layer costs of a PyTorch model: FLOPs, bytes moved and kind, in execution order.

One forward pass on a random input, watched three ways at once:

- forward hooks on every *leaf* module give the layers a runtime will see;
- `torch.utils.flop_counter.FlopCounterMode` counts matmul/convolution/attention
  FLOPs exactly, for any module, and the hooks read its running total to give
  each layer its share (no per-type formulas to keep in sync with PyTorch);
- a `TorchFunctionMode` records tensor operations that run *outside* any leaf
  module, such as the ``y + x`` of a residual block or an ``F.relu`` in a
  container's forward: ONNX Runtime and TensorRT run those as kernels too.

A layer's bytes are weights + inputs + outputs at the profile's precision. A
normalisation or activation that directly consumes a convolution's (or linear's)
output is marked `fused`: ONNX Runtime and TensorRT fold batch norm into the
convolution's weights and fuse the activation into its epilogue, so it costs
neither a launch nor a trip to memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["BYTES_PER_ELEMENT", "LayerCost", "LayerKind", "layer_costs"]

LayerKind = Literal["conv", "grouped_conv", "linear", "matmul", "attention", "norm", "act", "pool",
                    "elementwise", "reshape", "other"]

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class LayerCost:
    """One layer as a runtime sees it. `flops` counts a multiply-add as 2."""

    name: str  # module path, or "<fn>" for an operation outside any leaf module
    type: str  # module class or function name
    kind: LayerKind
    flops: int
    params: int  # weight elements read (parameters and buffers)
    input_elems: int
    output_elems: int
    bytes: int  # (params + inputs + outputs) x bytes per element at the precision asked
    fused: bool = False  # folded into the preceding conv/linear by ORT and TensorRT
    in_channels: int = 0  # convolutions and linears; 0 where it does not apply
    out_channels: int = 0
    groups: int = 1
    reads_input: bool = False  # consumes the model's input tensor directly

    def padded_flops(self, block: int) -> float:
        """FLOPs with channel counts rounded up to the kernel library's channel block.

        ONNX Runtime's CPU convolutions (MLAS "NCHWc") compute channels in blocks
        of the SIMD width (16 fp32 lanes with AVX-512, 8 with AVX2), so 40
        channels cost what 48 do. The layer reading the model's input keeps its
        input channels: MLAS runs it on the unblocked NCHW tensor.
        """
        if block <= 1 or self.kind not in ("conv", "grouped_conv") or not self.out_channels:
            return float(self.flops)
        scale = _ceil_to(self.out_channels, block) / self.out_channels
        if self.kind == "conv" and not self.reads_input:
            scale *= _ceil_to(self.in_channels, block) / self.in_channels
        return self.flops * scale

    @property
    def is_kernel(self) -> bool:
        """Does this layer cost a kernel launch? Reshapes are free; fused layers ride along."""
        return self.kind != "reshape" and not self.fused


_MODULE_KINDS: tuple[tuple[tuple[type, ...], LayerKind], ...] = (
    ((nn.Linear, nn.Bilinear), "linear"),
    ((nn.MultiheadAttention,), "attention"),
    ((nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
      nn.LocalResponseNorm, nn.RMSNorm), "norm"),
    ((nn.Flatten, nn.Unflatten, nn.Identity, nn.modules.dropout._DropoutNd), "reshape"),
)
_FN_KINDS: dict[str, LayerKind] = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d"), "conv"),
    **dict.fromkeys(("linear", "bilinear"), "linear"),
    **dict.fromkeys(("matmul", "__matmul__", "mm", "bmm", "addmm", "baddbmm", "einsum"), "matmul"),
    **dict.fromkeys(("scaled_dot_product_attention",), "attention"),
    **dict.fromkeys(("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"), "norm"),
    **dict.fromkeys(("relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish",
                     "hardsigmoid", "leaky_relu", "elu", "mish", "softmax", "log_softmax",
                     "hardtanh", "softplus"), "act"),
    **dict.fromkeys(("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
                     "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                     "adaptive_max_pool1d", "adaptive_max_pool2d", "mean", "sum", "amax"), "pool"),
    # views and metadata: no kernel, no memory traffic
    **dict.fromkeys(("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute",
                     "transpose", "t", "expand", "expand_as", "narrow", "select", "__getitem__",
                     "split", "chunk", "unbind", "detach", "view_as", "movedim", "dropout",
                     "contiguous", "to", "type", "float", "__get__", "size", "dim", "numel"),
                    "reshape"),
}
# elementwise cost per output element where FlopCounterMode counts nothing
_FLOPS_PER_ELEM: dict[str, int] = {"norm": 4, "act": 1, "elementwise": 1, "pool": 1, "other": 1}
_PRODUCERS = ("conv", "grouped_conv", "linear")
_ATOMIC = (nn.MultiheadAttention,)


def _module_kind(m: nn.Module) -> LayerKind:
    if isinstance(m, nn.modules.conv._ConvNd):
        return "grouped_conv" if m.groups > 1 else "conv"
    for types, kind in _MODULE_KINDS:
        if isinstance(m, types):
            return kind
    if type(m).__module__ == "torch.nn.modules.activation":
        return "act"
    if type(m).__module__ == "torch.nn.modules.pooling":
        return "pool"
    return "other"


def _ceil_to(c: int, block: int) -> int:
    return -(-c // block) * block


def _channels(m: nn.Module) -> tuple[int, int, int]:
    """(in, out, groups) of a convolution or linear layer, else (0, 0, 1)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels, m.groups
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, 1
    return 0, 0, 1


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _elems(obj: Any) -> int:
    return sum(t.numel() for t in _tensors(obj))


def _ptrs(obj: Any) -> set[int]:
    return {t.data_ptr() for t in _tensors(obj)}


class _Recorder:
    """Collects `LayerCost`s during one forward pass; see the module docstring."""

    def __init__(self, counter: FlopCounterMode, bytes_per_elem: int) -> None:
        self.counter = counter
        self.bpe = bytes_per_elem
        self.costs: list[LayerCost] = []
        self.depth = 0  # > 0 while inside a leaf module's forward
        self._flops_before: list[int] = []
        self._last_out: set[int] = set()  # data pointers of the last producing layer's output
        self._last_kind: LayerKind | None = None
        self.input_ptrs: set[int] = set()  # data pointers of the model's input

    def add(self, name: str, type_: str, kind: LayerKind, flops: int, params: int, inputs: Any,
            outputs: Any, channels: tuple[int, int, int] = (0, 0, 1)) -> None:
        in_elems, out_elems = _elems(inputs), _elems(outputs)
        if kind == "reshape":
            flops, params = 0, 0
        elif flops == 0:
            flops = _FLOPS_PER_ELEM.get(kind, 1) * out_elems
        first_input = next(iter(_tensors(inputs)), None)
        source = first_input.data_ptr() if first_input is not None else None
        fused = (kind in ("norm", "act") and source in self._last_out
                 and self._last_kind in (*_PRODUCERS, "norm", "act"))
        moved = 0 if kind == "reshape" else (params + in_elems + out_elems) * self.bpe
        self.costs.append(LayerCost(name=name, type=type_, kind=kind, flops=int(flops), params=int(params),
                                    input_elems=in_elems, output_elems=out_elems, bytes=int(moved),
                                    fused=fused, in_channels=channels[0], out_channels=channels[1],
                                    groups=channels[2], reads_input=source in self.input_ptrs))
        if kind != "reshape":
            # a chain conv -> bn -> relu stays fusable; anything else breaks it
            chain = kind in _PRODUCERS or fused
            self._last_out = _ptrs(outputs) if chain else set()
            self._last_kind = kind if chain else None
        else:
            self._last_out |= _ptrs(outputs)  # a view of a producer's output is still that output

    # -- leaf module hooks
    def pre_hook(self, module: nn.Module, inputs: Any) -> None:
        self.depth += 1
        self._flops_before.append(self.counter.get_total_flops())

    def make_post_hook(self, name: str) -> Any:
        def post_hook(module: nn.Module, inputs: Any, outputs: Any) -> None:
            self.depth -= 1
            flops = self.counter.get_total_flops() - self._flops_before.pop()
            atomic = isinstance(module, _ATOMIC)
            # float buffers are weights too (BN statistics); counters such as num_batches_tracked are not
            params = sum(p.numel() for p in module.parameters(recurse=atomic)) + \
                sum(b.numel() for b in module.buffers(recurse=atomic) if b.is_floating_point())
            kind = _module_kind(module)
            self.add(name, type(module).__name__, kind, flops, params, inputs, outputs, _channels(module))

        return post_hook


class _FunctionalOps(TorchFunctionMode):
    """Records tensor operations called outside every leaf module."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.rec = recorder

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.rec.depth > 0:
            return func(*args, **kwargs)
        before = self.rec.counter.get_total_flops()
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", type(func).__name__)
        kind = _FN_KINDS.get(name, "elementwise")
        if kind != "reshape" and next(iter(_tensors(out)), None) is not None and not name.startswith("__get"):
            weights = sum(t.numel() for t in _tensors((args, kwargs)) if isinstance(t, nn.Parameter))
            inputs = [t for t in _tensors((args, kwargs)) if not isinstance(t, nn.Parameter)]
            self.rec.add(f"<{name}>", name, kind, self.rec.counter.get_total_flops() - before,
                         weights, inputs, out)
        return out


def _layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules, plus modules that run as one fused operation although they have
    children (attention calls its projections' weights, not their modules)."""
    out: list[tuple[str, nn.Module]] = []
    atomic: list[str] = []
    for name, m in module.named_modules():
        if any(name.startswith(a + ".") for a in atomic):
            continue
        if isinstance(m, _ATOMIC):
            atomic.append(name)
            out.append((name, m))
        elif next(m.children(), None) is None:  # containers are not kernels
            out.append((name, m))
    return out


def layer_costs(module: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                precision: str = "fp32") -> list[LayerCost]:
    """Per-layer costs of `module` for inputs of per-sample shape `input_shape`.

    Runs one forward pass in eval mode under ``torch.no_grad`` (the module's mode
    is restored). Bytes are counted at `precision` (fp32, fp16 or int8).
    """
    if precision not in BYTES_PER_ELEMENT:
        raise ValueError(f"precision must be one of {', '.join(BYTES_PER_ELEMENT)} but got {precision!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 but got {batch_size}.")
    counter = FlopCounterMode(display=False)
    rec = _Recorder(counter, BYTES_PER_ELEMENT[precision])
    handles = []
    for name, m in _layers(module):
        handles.append(m.register_forward_pre_hook(rec.pre_hook))
        handles.append(m.register_forward_hook(rec.make_post_hook(name or type(m).__name__)))
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    rec.input_ptrs = {x.data_ptr()}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), counter, _FunctionalOps(rec):
            module(x)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return rec.costs
