"""Edge formats of a servable size: each made beside its ONNX file and checked where it runs.

ONNX is the base format (always written, `onnx_export`). On request
(`--formats onnx,ort,openvino,executorch`) each size is also written as

* ``ort``: ONNX Runtime's `.ort` format for ORT Mobile (`ort_format`),
* ``openvino``: an OpenVINO IR, `.xml` + `.bin` (`openvino_ir`),
* ``executorch``: an ExecuTorch `.pte` with the XNNPACK delegate (`executorch_pte`).

Every format is judged as the ONNX file is: loaded back in its own runtime, run on
the same real validation inputs (the batch, then its first sample alone) and
compared with PyTorch (`onnx_export.outputs_diff`: max abs diff, plus the share of
samples whose top class agrees), then timed on this host with the shared timing
loop under one CPU profile's settings (`format_timing_profile`), so its figure
stands beside the ONNX figure on that profile. A format that cannot be made,
loaded, run or timed is recorded with the reason and the run goes on: an edge
artefact is an extra and never costs the sizes already made.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..config import FORMATS
from ..files import first_line
from ..types import HardwareProfile, LatencyReport
from .onnx_export import Reference, _eval_mode, _leaves, outputs_diff

__all__ = ["DEFAULT_ATOL", "FORMATS", "FormatExport", "FormatParity", "checked", "export_formats",
           "format_timing_profile", "judge", "reference_outputs"]

DEFAULT_ATOL = 1e-4  # the ONNX export's own tolerance: every fp32 format is held to the same
# Backends whose profiles time on this machine's CPU: their settings are what formats are timed under.
_CPU_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")

Run = Callable[[np.ndarray], Sequence[Any]]
"""Runs a loaded model on one input array and returns its outputs."""


@dataclass(frozen=True)
class FormatParity:
    """A format's outputs against PyTorch's on the size's validation inputs."""

    max_abs_diff: float  # over the batch and its first sample alone (inf: could not be compared)
    argmax_agreement: float | None  # share of the batch whose top class is PyTorch's (None: no logits)
    samples: int  # validation samples in the batch
    atol: float
    error: str | None = None  # why the outputs could not be compared (shape, count)

    @property
    def ok(self) -> bool:
        return self.error is None and self.max_abs_diff <= self.atol

    def describe(self) -> str:
        """'' when it passes, else why not, in words."""
        if self.error is not None:
            return f"outputs cannot be compared with PyTorch's: {self.error}"
        if not self.ok:
            return f"outputs differ from PyTorch: max abs diff {self.max_abs_diff:.3g} exceeds atol {self.atol:g}"
        return ""


@dataclass(frozen=True)
class FormatExport:
    """One size in one edge format: its files, how it ran, or why it is missing or flagged."""

    format: str
    files: Mapping[str, Path] = field(default_factory=dict)  # role -> file; empty: not produced
    runtime: str = ""  # what loaded, ran and timed it, with its version
    parity: FormatParity | None = None
    latency: LatencyReport | None = None  # on `format_timing_profile`'s settings
    reason: str = ""  # why it was not produced, or why it is not ok
    notes: tuple[str, ...] = ()
    seconds: float = 0.0  # wall time to make and check it

    @property
    def produced(self) -> bool:
        return bool(self.files)

    @property
    def ok(self) -> bool:
        """Produced, loaded back, matching PyTorch within atol, and timed."""
        return (self.produced and not self.reason and self.parity is not None and self.parity.ok
                and self.latency is not None)


# --------------------------------------------------------------------------- shared checks


def reference_outputs(module: nn.Module, x: torch.Tensor) -> Reference:
    """PyTorch's outputs on the validation batch and on its first sample alone (what ONNX is checked on)."""
    x = x.detach().cpu()
    x = x.float() if x.is_floating_point() else x
    with _eval_mode(module), torch.no_grad():
        return {"batch": (x, _leaves(module(x))), "single": (x[:1], _leaves(module(x[:1])))}


def judge(reference: Reference, outputs: Mapping[str, Sequence[Any]], atol: float = DEFAULT_ATOL) -> FormatParity:
    """Max abs diff (the ONNX check's own comparison) and top-1 agreement on the batch."""
    diff, error = outputs_diff({k: [np.asarray(o) for o in v] for k, v in outputs.items()}, reference)
    x, expected = reference["batch"]
    agreement = None
    got = outputs.get("batch")
    if error is None and got and expected and expected[0].dim() >= 2:
        # the first output is the logits: compare classes along its last axis
        agreement = float(np.mean(np.asarray(got[0]).argmax(-1) == expected[0].numpy().argmax(-1)))
    return FormatParity(max_abs_diff=diff, argmax_agreement=agreement, samples=len(x), atol=atol, error=error)


def checked(fmt: str, files: Mapping[str, Path], runtime: str, reference: Reference, load: Callable[[], Run],
            measure: Callable[[], LatencyReport], *, atol: float = DEFAULT_ATOL,
            notes: Iterable[str] = ()) -> FormatExport:
    """A written format loaded back (`load`), run on the reference inputs, judged, then timed
    (`measure`); each step that fails says so in `reason` instead of raising."""
    notes = tuple(notes)
    try:
        run = load()
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types
        return FormatExport(fmt, files, runtime, reason=f"written, but {runtime} cannot load it: "
                                                         f"{type(e).__name__}: {first_line(e)}", notes=notes)
    try:
        outputs = {label: list(run(x.numpy())) for label, (x, _) in reference.items()}
    except Exception as e:  # noqa: BLE001
        return FormatExport(fmt, files, runtime, reason=f"loaded, but running it failed: "
                                                         f"{type(e).__name__}: {first_line(e)}", notes=notes)
    parity = judge(reference, outputs, atol)
    reason = parity.describe()
    latency = None
    try:
        latency = measure()
    except Exception as e:  # noqa: BLE001 - a format without a figure is still a usable file
        reason = "; ".join(r for r in (reason, f"not timed: {type(e).__name__}: {first_line(e)}") if r)
    return FormatExport(fmt, files, runtime, parity=parity, latency=latency, reason=reason, notes=notes)


def format_timing_profile(profiles: Sequence[HardwareProfile]) -> HardwareProfile:
    """The settings (threads, batch, warm-up, repeats) every format is timed under: the run's
    first profile measured on this machine's CPU (the budget's comes first), so each format's
    figure stands beside the ONNX figure taken there; else the default `host-cpu-1t`."""
    from ..hardware import DEFAULT_PROFILE, is_measurable, load_profile

    for p in profiles:
        if p.measured and p.backend in _CPU_BACKENDS and is_measurable(p):
            return p
    return load_profile(DEFAULT_PROFILE)


# --------------------------------------------------------------------------- every format


def _exporter(name: str) -> Callable[..., FormatExport]:
    """Imported on demand: each converter loads its own runtime (ExecuTorch's takes seconds)."""
    if name == "ort":
        from .ort_format import export_ort

        return export_ort
    if name == "openvino":
        from .openvino_ir import export_openvino

        return export_openvino
    if name == "executorch":
        from .executorch_pte import export_executorch

        return export_executorch
    raise ValueError(f"format must be one of {', '.join(FORMATS)} but got {name!r}.")


def export_formats(formats: Iterable[str], module: nn.Module, onnx_path: str | Path, x: torch.Tensor,
                   profile: HardwareProfile, input_shape: Sequence[int], *,
                   atol: float = DEFAULT_ATOL) -> dict[str, FormatExport]:
    """Each requested edge format of one size, written beside `onnx_path`, checked and timed.

    `module` is the size in PyTorch, `onnx_path` its parity-checked ONNX file, `x` a real
    validation batch, `profile` the timing settings (`format_timing_profile`). ``onnx``
    in `formats` is skipped (it is the base, already made). Never raises for a format
    that cannot be made: its `FormatExport` says why.
    """
    onnx_path = Path(onnx_path)
    wanted = [f for f in dict.fromkeys(formats) if f != "onnx"]
    for name in wanted:
        _exporter(name)  # an unknown name is a caller's mistake: fail before any work
    reference = reference_outputs(module, x)
    out: dict[str, FormatExport] = {}
    for name in wanted:
        started = time.perf_counter()
        try:
            made = _exporter(name)(onnx_path=onnx_path, module=module, reference=reference, profile=profile,
                                   input_shape=tuple(input_shape), atol=atol)
        except Exception as e:  # noqa: BLE001 - a converter failing in any way costs this format only
            made = FormatExport(name, reason=f"conversion failed: {type(e).__name__}: {first_line(e)}")
        out[name] = replace(made, seconds=round(time.perf_counter() - started, 3))
    return out
