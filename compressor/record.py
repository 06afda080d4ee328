"""The run record: typed values for what a run produced, and the one function that
turns them into the manifest.

Stages build these records; nothing else builds manifest dicts. `to_manifest`
is the only writer of the manifest's shape (documented in docs/manifest.md and
checked by `manifest.validate_manifest`), and the dict it returns is exactly
what `manifest.json` holds, so `compress()` returns what is on disk.

This module imports no stage (search, distill, export, hardware): records hold
names and numbers, never live modules.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from ._version import __version__
from .budget import Budget
from .files import json_safe
from .manifest import SCHEMA_VERSION
from .types import LatencyReport, to_jsonable

__all__ = ["FormatRecord", "Int8Record", "RunRecord", "SizeRecord", "TeacherRecord", "Verification", "runtime_versions",
           "size_from_dict", "teacher_from_dict", "to_manifest"]


@dataclass(frozen=True)
class TeacherRecord:
    path: str
    sha256: str
    format: str
    prunable: bool
    input_shape: tuple[int, ...]
    num_classes: int
    params: int
    macs: int
    accuracy: float  # the task's headline metric (`RunRecord.task`)
    latency: Mapping[str, LatencyReport] = field(default_factory=dict)
    metrics: Mapping[str, float | None] = field(default_factory=dict)  # every metric of the task, by key
    decode: Mapping[str, Any] = field(default_factory=dict)  # language models: one generated token (KV cache)


@dataclass(frozen=True)
class Int8Record:
    """An INT8 copy of one size: reported beside its fp32 model, never selected in its place."""

    file: str
    accuracy: float
    agreement_with_fp32: float
    settings: Mapping[str, Any]  # the quantization settings and why (the CPU class they were chosen for)
    latency: Mapping[str, LatencyReport] = field(default_factory=dict)
    # fp32 / INT8 latency on the budget's profile (> 1: INT8 is faster); None where not measured
    speedup: float | None = None
    note: str = ""

    @property
    def faster(self) -> bool:
        return self.speedup is not None and self.speedup > 1.0


@dataclass(frozen=True)
class FormatRecord:
    """One size in one edge format (`--formats`): its file, parity, latency, or why it is missing.

    Reported beside the ONNX file, never selected in its place; `ok` is false whenever
    `reason` says something (not produced, not loadable, outputs off, not timed)."""

    format: str
    ok: bool
    file: str | None = None  # the main file, run-relative; every file is also in the size's `files`
    runtime: str = ""  # what loaded, ran and timed it, with its version
    max_abs_diff: float | None = None  # vs PyTorch on the validation batch and its first sample
    argmax_agreement: float | None = None  # share of the batch whose top class is PyTorch's
    parity_samples: int = 0
    atol: float | None = None
    latency: LatencyReport | None = None  # on this host, under the settings of `latency.profile`
    reason: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SizeRecord:
    """One servable size: its files and every figure it is judged on."""

    name: str
    ratio: float | Mapping[str, float]
    params: int
    macs: int
    accuracy: float
    teacher_agreement: float
    onnx_max_abs_diff: float
    parity_ok: bool
    opset: int
    latency: Mapping[str, LatencyReport]
    files: Mapping[str, str]  # role -> path relative to the run folder
    meets_budget: bool = False
    sha256: Mapping[str, str] = field(default_factory=dict)
    int8: Int8Record | None = None
    arch: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    formats: Mapping[str, FormatRecord] = field(default_factory=dict)  # requested edge formats (not onnx)
    # every metric of the task by key (`RunRecord.task`); `accuracy` holds the headline one
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    # language models: the KV-cache decoder step's file, parity and latency per generated token
    decode: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verification:
    """The selected size measured again in a fresh process, after everything else."""

    size: str
    first: LatencyReport
    second: LatencyReport
    holds: bool  # the claim still meets the budget, judged by `Budget.claim`
    third: LatencyReport | None = None  # taken when the first two did not make the claim
    after_miss: bool = False  # timed again although `first` missed: no size fit at its first figure


@dataclass(frozen=True)
class RunRecord:
    config: Mapping[str, Any]
    budget: Budget
    teacher: TeacherRecord
    sizes: tuple[SizeRecord, ...]
    selected: str | None
    verification: tuple[Verification, ...] = ()
    search: Mapping[str, Any] | None = None
    training: Mapping[str, Any] | None = None
    tensorrt: Mapping[str, Any] = field(default_factory=lambda: {"available": False, "reason": ""})
    # the machine the run measured on: what INT8 settings and channel rounding were chosen for
    host: Mapping[str, Any] = field(default_factory=dict)
    reused: Mapping[str, Any] = field(default_factory=dict)  # work a resumed run took over, e.g. {"exports": [...]}
    stages: Mapping[str, float] = field(default_factory=dict)  # stage -> wall seconds
    # what a server applies to a raw sample, and the class names (also in each ONNX file's metadata)
    serving: Mapping[str, Any] = field(default_factory=dict)
    # the task (`compressor.tasks`): its name, which metric `accuracy` holds, every metric's label
    task: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: Mapping[str, str | None] = field(default_factory=lambda: runtime_versions())


def size_from_dict(d: Mapping[str, Any]) -> SizeRecord:
    """A `SizeRecord` read back from its JSON form (`to_jsonable`), e.g. a finished export on resume."""
    int8 = d.get("int8")
    return SizeRecord(
        name=d["name"], ratio=d["ratio"], params=int(d["params"]), macs=int(d["macs"]), accuracy=d["accuracy"],
        teacher_agreement=d["teacher_agreement"], onnx_max_abs_diff=d["onnx_max_abs_diff"],
        parity_ok=bool(d["parity_ok"]), opset=int(d["opset"]),
        latency={p: LatencyReport.from_dict(r) for p, r in d["latency"].items()},
        files=dict(d["files"]), meets_budget=bool(d.get("meets_budget", False)), sha256=dict(d.get("sha256") or {}),
        int8=None if not int8 else Int8Record(
            file=int8["file"], accuracy=int8["accuracy"], agreement_with_fp32=int8["agreement_with_fp32"],
            settings=dict(int8["settings"]), latency={p: LatencyReport.from_dict(r) for p, r in int8["latency"].items()},
            speedup=int8.get("speedup"), note=int8.get("note", "")),
        arch=d.get("arch"), notes=tuple(d.get("notes") or ()),
        formats={name: _format_from_dict(f) for name, f in (d.get("formats") or {}).items()},
        metrics=dict(d.get("metrics") or {}), decode=_decode_from_dict(d.get("decode")))


def _decode_from_dict(d: Mapping[str, Any] | None) -> dict[str, Any]:
    if not d:
        return {}
    return {**d, "latency": {p: LatencyReport.from_dict(r) for p, r in (d.get("latency") or {}).items()}}


def _format_from_dict(d: Mapping[str, Any]) -> FormatRecord:
    latency = d.get("latency")
    return FormatRecord(
        format=d["format"], ok=bool(d["ok"]), file=d.get("file"), runtime=d.get("runtime", ""),
        max_abs_diff=d.get("max_abs_diff"), argmax_agreement=d.get("argmax_agreement"),
        parity_samples=int(d.get("parity_samples") or 0), atol=d.get("atol"),
        latency=LatencyReport.from_dict(latency) if latency else None, reason=d.get("reason", ""),
        notes=tuple(d.get("notes") or ()))


def teacher_from_dict(d: Mapping[str, Any]) -> TeacherRecord:
    """A `TeacherRecord` read back from its JSON form, e.g. the teacher's record on resume."""
    return TeacherRecord(
        path=str(d["path"]), sha256=str(d["sha256"]), format=str(d["format"]), prunable=bool(d["prunable"]),
        input_shape=tuple(int(v) for v in d["input_shape"]), num_classes=int(d["num_classes"]),
        params=int(d["params"]), macs=int(d["macs"]), accuracy=float(d["accuracy"]),
        latency={p: LatencyReport.from_dict(r) for p, r in d["latency"].items()},
        metrics=dict(d.get("metrics") or {}), decode=_decode_from_dict(d.get("decode")))


def runtime_versions() -> dict[str, str | None]:
    """Versions of everything that changes results; read from package metadata (no imports)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"compressor": __version__, "python": platform.python_version(), "torch": version("torch"),
            "onnx": version("onnx"), "onnxruntime": version("onnxruntime"), "optuna": version("optuna"),
            "torch_pruning": version("torch-pruning"),
            # the edge formats' runtimes (`--formats`): their files and figures depend on them
            "openvino": version("openvino"), "executorch": version("executorch"),
            "transformers": version("transformers")}  # language-model teachers and their sizes


def to_manifest(run: RunRecord) -> dict[str, Any]:
    """The manifest dict, in plain JSON values, exactly as `manifest.json` stores it."""
    budget = run.budget
    closest = min(run.sizes, key=lambda s: s.latency[budget.profile].value(budget.stat), default=None)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": run.created,
        "compressor_version": __version__,
        "versions": dict(run.versions),
        "config": dict(run.config),
        "budget": budget.to_dict(),
        "teacher": _teacher(run.teacher),
        "models": [_size(s, budget) for s in run.sizes],
        "selected": run.selected,
        "budget_met": run.selected is not None,
        "closest": None if closest is None else {
            "name": closest.name, "latency_ms": closest.latency[budget.profile].value(budget.stat),
            "over_budget_ms": closest.latency[budget.profile].value(budget.stat) - budget.ms},
        "verification": [_verification(v, budget) for v in run.verification],
        "tensorrt": dict(run.tensorrt),
        "host": dict(run.host),
        "reused": dict(run.reused),
        "stages": dict(run.stages),
        "serving": dict(run.serving),
        "seconds": run.seconds,
    }
    if run.task:
        manifest["task"] = dict(run.task)
    if run.search is not None:
        manifest["search"] = dict(run.search)
    if run.training is not None:
        manifest["training"] = dict(run.training)
    # one JSON round trip: tuples become lists, NaN/inf become null, as on disk
    return json.loads(json.dumps(json_safe(to_jsonable(manifest)), allow_nan=False))


def _teacher(t: TeacherRecord) -> dict[str, Any]:
    out = {"path": t.path, "sha256": t.sha256, "format": t.format, "prunable": t.prunable,
            "input_shape": list(t.input_shape), "num_classes": t.num_classes, "params": t.params, "macs": t.macs,
            "accuracy": t.accuracy, "latency": dict(t.latency)}
    if t.metrics:
        out["metrics"] = dict(t.metrics)
    if t.decode:
        out["decode"] = dict(t.decode)
    return out


def _size(s: SizeRecord, budget: Budget) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": s.name, "ratio": s.ratio, "params": s.params, "macs": s.macs, "accuracy": s.accuracy,
        "teacher_agreement": s.teacher_agreement, "onnx_max_abs_diff": s.onnx_max_abs_diff,
        "parity_ok": s.parity_ok, "opset": s.opset, "latency": dict(s.latency),
        "predicted_latency_ms": {p: r.env.get("predicted_ms", r.value()) for p, r in s.latency.items()},
        "meets_budget": s.meets_budget, "budget_margin": budget.margin(s.latency[budget.profile]),
        "files": dict(s.files), "sha256": dict(s.sha256),
    }
    if s.int8 is not None:
        q = s.int8
        out["int8"] = {"file": q.file, "accuracy": q.accuracy, "agreement_with_fp32": q.agreement_with_fp32,
                       "latency": dict(q.latency), "settings": dict(q.settings), "speedup": q.speedup,
                       "faster_than_fp32": q.faster, "selectable": False, "note": q.note}
    if s.arch is not None:
        out["arch"] = dict(s.arch)
    if s.formats:
        out["formats"] = {name: _format(f) for name, f in s.formats.items()}
    if s.notes:
        out["notes"] = list(s.notes)
    if s.metrics:
        out["metrics"] = dict(s.metrics)
    if s.decode:
        out["decode"] = dict(s.decode)
    return out


def _format(f: FormatRecord) -> dict[str, Any]:
    """A format as the manifest stores it: `ok`, and what was (or could not be) made."""
    out: dict[str, Any] = {"ok": f.ok}
    if f.file is not None:
        out["file"] = f.file
    if f.runtime:
        out["runtime"] = f.runtime
    if f.max_abs_diff is not None or f.parity_samples:
        out["parity"] = {"max_abs_diff": f.max_abs_diff, "argmax_agreement": f.argmax_agreement,
                         "samples": f.parity_samples, "atol": f.atol,
                         "ok": f.max_abs_diff is not None and f.atol is not None and f.max_abs_diff <= f.atol}
    if f.latency is not None:
        out["latency"] = f.latency
    if f.reason:
        out["reason"] = f.reason
    if f.notes:
        out["notes"] = list(f.notes)
    return out


def _verification(v: Verification, budget: Budget) -> dict[str, Any]:
    out = {"size": v.size, "first": v.first, "second": v.second, "first_ms": v.first.value(budget.stat),
           "second_ms": v.second.value(budget.stat), "margin_first": budget.margin(v.first),
           "margin_second": budget.margin(v.second), "holds": v.holds}
    if v.third is not None:
        out.update(third=v.third, third_ms=v.third.value(budget.stat), margin_third=budget.margin(v.third))
    if v.after_miss:
        out["after_miss"] = True
    return out
