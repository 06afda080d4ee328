"""ONNX export of one servable size, checked against PyTorch before it ships.

Exporter and opset (checked with torch 2.13, onnx 1.23, onnxruntime 1.32):

* **TorchScript exporter first** (`torch.onnx.export(..., dynamo=False)`) for modules it
  can trace: plain modules, `fx.symbolic_trace` GraphModules and lifted GraphModules whose
  nodes call `torch.ops.aten.*`. It is about ten times faster than the dynamo exporter on
  the servable sizes here (0.15 s vs 1.5 s warm, 4 s cold, for a 3-block CNN), and a run
  exports every size. Its graphs pass the same parity check as dynamo's.
* **Dynamo exporter** (`dynamo=True`) for `torch.export` modules (`ep.module()`), which the
  TorchScript exporter cannot trace ("Calling train() is not supported yet"), and as the
  fallback when the TorchScript exporter fails (it is deprecated upstream: once removed,
  every export takes this path). A fallback is recorded in `OnnxExport.notes`, never hidden.
* **Opset 18** is the opset onnxscript's torchlib is written in, so the exporter runs no
  version-conversion pass (a common source of export failures at other opsets). ONNX
  Runtime >= 1.14, TensorRT >= 8.6 and ORT's QDQ per-channel quantizer (needs >= 13)
  all read it.
* **One file**: `external_data=False`. Servable sizes are small (far below protobuf's
  2 GiB limit); a model that would need external data is refused with a clear error
  rather than silently split into `.onnx` + `.onnx.data`.
* **Dynamic batch**: a named `Dim("batch")` in `dynamic_shapes`. torch.export
  specialises any dimension traced at size 1, so tracing always uses >= 2 samples.

Parity is measured on the caller's real validation batch and again on its first
sample alone (which also proves the batch dimension really is dynamic). The max
absolute difference is reported; above `atol` the export is flagged
(`parity_ok=False`) with the reason in `notes`, never silently passed.
"""
from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .._version import __version__
from ..errors import ExportError
from ..files import atomic_output, first_line
from ..types import LatencyReport

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OnnxExport",
    "export_onnx",
    "onnx_metadata",
    "onnx_predict",
    "outputs_diff",
    "read_onnx_metadata",
    "set_onnx_metadata",
]

DEFAULT_OPSET = 18
INPUT_NAME = "input"
_PROTOBUF_LIMIT = 2**31 - 1  # bytes: one ModelProto cannot be larger
Exporter = Literal["auto", "dynamo", "torchscript"]


# The relative part of the parity tolerance: float32 carries about 7 digits, and a few dozen layers of
# sums lose one or two (the zoo's exports differ from PyTorch by a relative 1e-7 to 2e-6)
PARITY_RTOL = 1e-5


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote and how far it can be trusted."""

    path: Path
    opset: int
    max_abs_diff: float  # ONNX Runtime vs PyTorch on the validation batch (inf: could not run)
    parity_ok: bool
    slimmed: bool
    checker_ok: bool
    notes: tuple[str, ...] = ()
    exporter: str = "dynamo"

    @property
    def ok(self) -> bool:
        """True when the file is safe to serve without a caveat."""
        return self.parity_ok and self.checker_ok


# --------------------------------------------------------------------------- export


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    opset: int | None = None,
    slim: bool = True,
    atol: float = 1e-4,
    exporter: Exporter = "auto",
    input_name: str = INPUT_NAME,
    dynamic: Mapping[int, str] | None = None,
) -> OnnxExport:
    """Export `model` to a single ONNX file with a dynamic batch dimension.

    `example_inputs` must be a real validation batch: parity on random noise can hide
    differences that only appear on in-distribution activations. The file is checked
    with `onnx.checker` (full check), simplified with onnxslim when `slim` (and the
    unsimplified graph kept if slimming would break parity), and written atomically.
    `exporter="auto"` tries the TorchScript exporter, then dynamo (dynamo alone for a
    `torch.export` module).

    `dynamic` names more dynamic axes of the input, shared by every output (a language
    model's ``{1: "sequence"}``); parity is then also checked on one sample cut to half
    its length on those axes, so a length baked into the graph shows as a parity failure.
    """
    path = Path(path)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 1 or len(example_inputs) == 0:
        raise ExportError("export_onnx needs a non-empty batch tensor as example_inputs")
    if atol <= 0:
        raise ValueError(f"atol must be positive but got {atol}.")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript' but got {exporter!r}.")
    x = _as_input(example_inputs).contiguous()

    notes: list[str] = []
    with _eval_mode(model), torch.no_grad():
        expected = _leaves(model(x))
        expected_one = _leaves(model(x[:1]))
        axes = {0: "batch", **dict(dynamic or {})}
        reference = {"batch": (x, expected), "single": (x[:1], expected_one)}
        if len(axes) > 1:
            short = x[:1][tuple(slice(None, max(1, n // 2)) if i in axes and i > 0 else slice(None)
                                for i, n in enumerate(x.shape))].contiguous()
            reference["shorter"] = (short, _leaves(model(short)))
        proto, used = _export_proto(model, _trace_input(x), opset, exporter, notes, input_name, axes)

    diff, run_error = _parity(proto, reference)
    # float32 rounding grows with the outputs' size: a network whose logits reach a few hundred differs
    # from PyTorch by 2e-4 (a relative 1e-6) through nothing but the order of its additions (MnasNet's
    # nested sizes on the zoo), so the tolerance is `atol` plus a relative part, as numpy's allclose
    scale = max((_largest_finite(e) for _, outs in reference.values() for e in outs), default=0.0)
    tolerance = atol + PARITY_RTOL * scale
    slimmed = False
    if slim:
        slim_proto = _slim(proto, notes)
        if slim_proto is not None:
            slim_diff, slim_error = _parity(slim_proto, reference)
            if slim_error is None and (slim_diff <= tolerance or slim_diff <= diff):
                proto, diff, run_error, slimmed = slim_proto, slim_diff, None, True
            else:
                notes.append(f"onnxslim output kept out: parity {slim_diff:.3g} vs {diff:.3g} unslimmed"
                             + (f" ({slim_error})" if slim_error else ""))

    parity_ok = run_error is None and diff <= tolerance
    if run_error is not None:
        notes.append(f"ONNX Runtime could not run the export: {run_error}")
    elif not parity_ok:
        notes.append(f"max abs diff {diff:.3g} vs PyTorch exceeds atol {atol:g} + {PARITY_RTOL:g} x the largest "
                     f"output {scale:.3g}")

    checker_ok = _check(proto, notes)
    props = {
        "compressor_version": __version__,
        "exporter": f"torch.onnx ({used}), torch {torch.__version__}",
        "parity_max_abs_diff": _fmt_float(diff),
        "parity_tolerance": _fmt_float(tolerance),
        **_stringify(metadata or {}),
    }
    _merge_metadata(proto, props)
    _save(proto, path)
    return OnnxExport(path=path, opset=opset, max_abs_diff=diff, parity_ok=parity_ok, slimmed=slimmed,
                      checker_ok=checker_ok, notes=tuple(notes), exporter=used)


def _largest_finite(t: torch.Tensor) -> float:
    """The largest magnitude among `t`'s finite values (0 when none): the scale of its rounding error."""
    a = np.abs(t.detach().cpu().numpy().astype(np.float64, copy=False))
    return float(np.max(a, initial=0.0, where=np.isfinite(a)))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode and restore the caller's mode afterwards.

    `torch.export` modules refuse `train()`/`eval()` (NotImplementedError); they are
    already inference graphs, so they are used as they are.
    """
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:
        yield
        return
    try:
        yield
    finally:
        model.train(was_training)


def _trace_input(x: torch.Tensor) -> torch.Tensor:
    """Two samples: enough to keep the batch symbolic, small enough to trace fast."""
    return x[:2] if len(x) >= 2 else x.repeat(2, *([1] * (x.dim() - 1)))


def _export_proto(model: nn.Module, x: torch.Tensor, opset: int, exporter: Exporter,
                  notes: list[str], input_name: str = INPUT_NAME,
                  axes: Mapping[int, str] | None = None) -> tuple[onnx.ModelProto, str]:
    axes = axes or {0: "batch"}
    dynamo_only = _is_exported_program_module(model) or _reads_batch_size(model)
    auto = ("dynamo",) if dynamo_only else ("torchscript", "dynamo")
    order: Sequence[str] = {"auto": auto, "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    errors: list[str] = []
    for name in order:
        try:
            proto = _dynamo(model, x, opset, input_name, axes) if name == "dynamo" else \
                _torchscript(model, x, opset, input_name, axes)
        except Exception as e:  # noqa: BLE001 - any exporter failure moves on to the next one
            errors.append(f"{name}: {type(e).__name__}: {first_line(e)}")
            continue
        if errors:
            notes.append(f"exported with the {name} exporter after: " + "; ".join(errors))
        return proto, name
    raise ExportError(f"ONNX export failed ({'; '.join(errors)})")


def _is_exported_program_module(model: nn.Module) -> bool:
    """`ExportedProgram.module()`: an inference graph with pytree specs that only dynamo exports."""
    return isinstance(model, torch.fx.GraphModule) and hasattr(model, "_in_spec") and hasattr(model, "_out_spec")


def _reads_batch_size(model: nn.Module) -> bool:
    """A lifted graph that reads a size as a number (`aten.sym_size`, e.g. a ViT expanding its class token
    to the batch): the TorchScript tracer freezes that number into the graph, and the export then runs at
    the traced batch size only. Dynamo keeps it symbolic."""
    return isinstance(model, torch.fx.GraphModule) and any(
        n.op == "call_function" and n.target is torch.ops.aten.sym_size.int for n in model.graph.nodes)


def _dynamo(model: nn.Module, x: torch.Tensor, opset: int, input_name: str = INPUT_NAME,
            axes: Mapping[int, str] | None = None) -> onnx.ModelProto:
    dims = {i: torch.export.Dim(n) for i, n in (axes or {0: "batch"}).items()}
    with _quiet_exporter():
        program = torch.onnx.export(
            model, (x,), None, dynamo=True, external_data=False, opset_version=opset,
            input_names=[input_name], dynamic_shapes=(dims,),
            optimize=True, verify=False, report=False, verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    _name_outputs(proto)
    return proto


def _torchscript(model: nn.Module, x: torch.Tensor, opset: int, input_name: str = INPUT_NAME,
                 axes: Mapping[int, str] | None = None) -> onnx.ModelProto:
    import tempfile

    axes = dict(axes or {0: "batch"})

    outputs = _output_names(len(_leaves(model(x))))
    with tempfile.TemporaryDirectory(prefix="onnx-ts-") as tmp, _quiet_exporter():
        f = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (x,), f, dynamo=False, opset_version=opset, input_names=[input_name],
            output_names=outputs, dynamic_axes={input_name: axes, **{o: axes for o in outputs}},
            do_constant_folding=True,
        )
        return onnx.load_model(str(f))


def _output_names(n: int) -> list[str]:
    return ["logits"] if n == 1 else [f"output_{i}" for i in range(n)]


def _name_outputs(proto: onnx.ModelProto) -> None:
    """Give outputs stable names ('logits') so serving code does not depend on the exporter."""
    names = _output_names(len(proto.graph.output))
    renames = {o.name: new for o, new in zip(proto.graph.output, names) if o.name != new}
    if not renames:
        return
    taken = {n for node in proto.graph.node for n in (*node.input, *node.output)}
    if taken & set(renames.values()) - set(renames):
        return  # a clash with an internal name: keep the exporter's names
    for node in proto.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for o in proto.graph.output:
        o.name = renames.get(o.name, o.name)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and its 'torchvision is not installed' notices."""
    import contextlib
    import io
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _slim(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto | None:
    try:
        import onnxslim
    except ImportError:
        notes.append("onnxslim not installed: graph not simplified")
        return None
    try:
        with _quiet_exporter():
            return onnxslim.slim(proto)
    except Exception as e:  # noqa: BLE001 - simplification is an optimisation, never fatal
        notes.append(f"onnxslim failed, graph not simplified: {type(e).__name__}: {first_line(e)}")
        return None


def _check(proto: onnx.ModelProto, notes: list[str]) -> bool:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001 - checker raises several types; all mean "not clean"
        notes.append(f"onnx.checker: {first_line(e)}")
        return False
    return True


def _save(proto: onnx.ModelProto, path: Path) -> None:
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(f"{path.name}: model is over 2 GiB and cannot be a single ONNX file")
    with atomic_output(path) as tmp:
        onnx.save_model(proto, str(tmp))


# --------------------------------------------------------------------------- parity


def _leaves(out: Any) -> list[torch.Tensor]:
    """Model outputs in a fixed order: a tensor, or tensors nested in tuples/lists/dicts."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


Reference = Mapping[str, tuple[torch.Tensor, list[torch.Tensor]]]
"""Label ('batch', 'single') -> (input, PyTorch's outputs on it)."""


def _parity(proto: onnx.ModelProto, reference: Reference) -> tuple[float, str | None]:
    """Max abs diff of ONNX Runtime vs PyTorch over every reference input, or (inf, why)."""
    try:
        session = _session(proto.SerializeToString(), threads=None)
        got = {label: session.run(None, {session.get_inputs()[0].name: x.numpy()})
               for label, (x, _) in reference.items()}
    except Exception as e:  # noqa: BLE001 - any runtime failure is a parity failure
        return math.inf, f"{type(e).__name__}: {first_line(e)}"
    return outputs_diff(got, reference)


def outputs_diff(got: Mapping[str, Sequence[np.ndarray]], reference: Reference) -> tuple[float, str | None]:
    """Max abs diff of a runtime's outputs (per reference label) vs PyTorch's, or (inf, why).

    The one comparison every exported format is judged by: ONNX here, and the edge
    formats (`formats`) on the same reference inputs."""
    worst = 0.0
    for label, (_, expected) in reference.items():
        outs = got.get(label)
        if outs is None:
            return math.inf, f"no outputs for the {label} input"
        if len(outs) != len(expected):
            return math.inf, f"{len(outs)} outputs, PyTorch gives {len(expected)}"
        for g, e in zip(outs, expected):
            g = np.asarray(g)
            if g.shape != tuple(e.shape):
                return math.inf, f"output shape {g.shape} != {tuple(e.shape)} at {label} input"
            worst = max(worst, _max_abs_diff(g, e.numpy()))
    return worst, None


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """NaN in the same place on both sides counts as equal; NaN on one side is infinite."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    d = np.where(both_nan, 0.0, np.abs(a64 - b64))
    d = np.where(np.isnan(d), np.inf, d)
    return float(d.max()) if d.size else 0.0


# --------------------------------------------------------------------------- metadata


def onnx_metadata(
    *,
    name: str,
    ratio: float,
    accuracy: float | None = None,
    teacher_agreement: float | None = None,
    latency: Mapping[str, LatencyReport | Mapping[str, Any]] | None = None,
    budget: str | None = None,
    teacher_sha256: str | None = None,
    **extra: Any,
) -> dict[str, str]:
    """The standard `metadata_props` of a servable size, as strings.

    `latency` is stored as JSON `{profile: {"stat", "ms", "measured"}}` so a serving
    process can read the figure it was picked on without the run folder.
    """
    props: dict[str, Any] = {"size": name, "width_ratio": ratio, "compressor_version": __version__}
    if accuracy is not None:
        props["accuracy"] = accuracy
    if teacher_agreement is not None:
        props["teacher_agreement"] = teacher_agreement
    if latency is not None:
        props["latency"] = {p: _latency_summary(r) for p, r in latency.items()}
    if budget is not None:
        props["budget"] = budget
    if teacher_sha256 is not None:
        props["teacher_sha256"] = teacher_sha256
    props.update(extra)
    return _stringify(props)


def _latency_summary(r: LatencyReport | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(r, LatencyReport):
        return {"stat": r.stat, "ms": round(r.value(), 6), "measured": r.measured}
    stat = r.get("stat", "p50")
    return {"stat": stat, "ms": r.get(f"{stat}_ms"), "measured": r.get("measured")}


def set_onnx_metadata(path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Merge `metadata` into the file's `metadata_props` and rewrite it atomically.

    Used once latency is known, after export. Keys not in `metadata` are kept. The
    file's hash changes: hash it (`sha256_file`) after the last call, not before.
    """
    path = Path(path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf errors have no common base
        raise ExportError(f"cannot read ONNX file {path}: {first_line(e)}") from None
    _merge_metadata(proto, _stringify(metadata))
    _save(proto, path)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The file's `metadata_props` as a dict (weights are not loaded)."""
    proto = onnx.load_model(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _merge_metadata(proto: onnx.ModelProto, props: Mapping[str, str]) -> None:
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update(props)
    del proto.metadata_props[:]
    for key in sorted(merged):
        proto.metadata_props.add(key=key, value=merged[key])


def _stringify(metadata: Mapping[str, Any]) -> dict[str, str]:
    """ONNX metadata values are strings: numbers compactly, structures as JSON."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, float):
            out[str(key)] = _fmt_float(value)
        elif isinstance(value, (Mapping, list, tuple)):
            out[str(key)] = json.dumps(value, sort_keys=True, default=str)
        else:
            out[str(key)] = str(value)
    return out


def _fmt_float(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else str(v)


# --------------------------------------------------------------------------- inference


def onnx_predict(onnx_path: str | Path, x: torch.Tensor, batch_size: int = 256, *,
                 threads: int | None = None) -> np.ndarray:
    """Logits (first output) of an ONNX model on `x`, on ONNX Runtime's CPU provider.

    For accuracy evaluation of exported (and INT8) files; latency is measured
    elsewhere (`compressor.hardware`) under a profile's controlled settings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 but got {batch_size}.")
    session = _session(str(onnx_path), threads=threads)
    name = session.get_inputs()[0].name
    arr = _as_input(torch.as_tensor(x)).numpy()
    parts = [session.run(None, {name: arr[i:i + batch_size]})[0] for i in range(0, len(arr), batch_size)]
    return np.concatenate(parts) if parts else np.empty((0,), dtype=np.float32)


def _as_input(x: torch.Tensor) -> torch.Tensor:
    """Float inputs as float32 (what the export traced); integer inputs (token ids) unchanged."""
    x = x.detach().cpu()
    return x.float() if x.is_floating_point() else x


def _session(model: str | bytes, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

