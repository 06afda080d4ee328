"""Typed records passed between stages. Read this file first.

Every record is a frozen dataclass of names and numbers (never live modules,
except `Teacher.module`), so it can be written to the manifest and read back.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from .budget import Budget, Stat

if TYPE_CHECKING:  # imported where used: a process that only times an ONNX file never loads torch
    import torch
    from torch import nn

__all__ = ["Budget", "Candidate", "DataSplits", "DeviceSpec", "HardwareProfile", "InputSpec", "LatencyReport",
           "SearchResult", "Stat", "StudentFamily", "Teacher", "to_jsonable"]


@dataclass(frozen=True)
class InputSpec:
    """Shape of ONE sample (no batch dimension) and the number of classes."""

    shape: tuple[int, ...]
    num_classes: int
    dtype: str = "float32"

    def example(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.shape), generator=g)


@dataclass
class Teacher:
    """A loaded teacher. `module` is an eval-mode `nn.Module` that Torch-Pruning
    can trace when `prunable` is true (see `compressor.intake.teacher`)."""

    module: nn.Module
    spec: InputSpec
    source: str
    format: Literal["torchscript", "export", "state_dict", "pickle", "module"]
    sha256: str
    prunable: bool = True


@dataclass(frozen=True)
class DataSplits:
    """Deterministic train/validation split of one labelled dataset."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    # What a server must do to a raw sample to get what the model saw here (`serving.preprocess`):
    # {"input": what a raw sample is, "steps": [{"op": "scale" | "resize" | "image" | "normalize", ...}]}
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet figures used by the roofline predictor for targets we cannot measure."""

    peak_gflops: Mapping[str, float]  # per precision, e.g. {"fp32": 50.0, "fp16": 100.0}
    memory_bandwidth_gbs: float
    layer_overhead_us: float


@dataclass(frozen=True)
class HardwareProfile:
    """One target, loaded from a file in `compressor/profiles/` (see `compressor.hardware.profiles`)."""

    name: str
    backend: Literal["onnxruntime-cpu", "openvino-cpu", "torch-cuda", "tensorrt"]
    description: str = ""
    threads: int = 1  # 0 = all cores
    batch_size: int = 1
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    warmup_runs: int = 10
    warmup_seconds: float = 0.2
    repeats: int = 100
    min_seconds: float = 0.5
    stat: Stat = "p50"
    round_to: int = 8  # channel counts are rounded to this multiple
    measured: bool = True  # False: a target we can only predict for
    isa: str = ""  # predicted CPU targets: instruction-set class for INT8 (hardware.isa); "" = the host's
    device: DeviceSpec | None = None
    path: str = ""


@dataclass(frozen=True)
class LatencyReport:
    """Latency of one model on one profile; `measured` False means predicted."""

    profile: str
    stat: Stat
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cov: float
    samples: int
    measured: bool
    batch_size: int = 1
    env: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # How far the budget statistic moved within this measurement: half its range over
    # consecutive blocks of the timed runs, or its sampling error for short series
    # (hardware.timing). 0 for predictions. Budget.fits adds it; `confirmed_by` widens it
    # with a second, independent measurement.
    spread_ms: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyReport":
        """A report read back from a manifest (unknown keys ignored, newer optional keys defaulted)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["warnings"] = tuple(values.get("warnings") or ())
        values["env"] = dict(values.get("env") or {})
        values["spread_ms"] = float(values.get("spread_ms") or 0.0)
        return cls(**values)

    def confirmed_by(self, other: "LatencyReport") -> "LatencyReport":
        """This report judged together with a second measurement of the same model.

        One series sees how its statistic drifts within a process, not how it moves
        between processes (allocation, cache and frequency states differ per start);
        two independent series show that directly. The spread becomes the larger of
        this series' own and the distance between the two statistics.
        """
        apart = abs(self.value() - other.value(self.stat))
        return dataclasses.replace(self, spread_ms=max(self.spread_ms, other.spread_ms, apart))

    def value(self, stat: Stat | None = None) -> float:
        """The statistic a budget applies to (the profile's, unless given)."""
        return float(getattr(self, f"{stat or self.stat}_ms"))

    @classmethod
    def predicted(cls, profile: str, stat: Stat, ms: float, env: Mapping[str, Any] | None = None,
                  batch_size: int = 1) -> "LatencyReport":
        return cls(profile=profile, stat=stat, p50_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms,
                   std_ms=0.0, cov=0.0, samples=0, measured=False, batch_size=batch_size,
                   env=dict(env or {}))


@dataclass(frozen=True)
class Candidate:
    """One architecture proposed by the search; `arch` is JSON-serialisable."""

    arch: Mapping[str, Any]
    proxy_scores: Mapping[str, float]
    est_latency_ms: float
    trial_number: int
    params: int = 0
    macs: int = 0
    score: float | None = None  # the study's objective (the proxy's score); None where not searched


@dataclass(frozen=True)
class SearchResult:
    """`student` is the searched architecture that fits the budget; `ta` is that
    architecture widened (up to the teacher's cost) so the student nests inside it."""

    ta: Candidate
    student: Candidate
    pareto: tuple[Candidate, ...]
    study_name: str
    storage: str
    n_trials: int
    n_failed: int
    feasible: bool = True  # False: no candidate met the budget; `student` is the fastest one found
    # in-budget candidates off the front, best score first: a front candidate that measures over the
    # budget can leave one of these as the best-scoring network that fits (`premeasure`)
    runners_up: tuple[Candidate, ...] = ()
    # candidates predicted over the budget by at most `OVER_BUDGET_REACH`, best score first: when the
    # pick measures far under its prediction, the best of these that measures within budget is taken
    over_budget: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class StudentFamily:
    """One trained network holding several nested widths (Matryoshka prefixes)."""

    arch: Mapping[str, Any]
    ratios: tuple[float, ...]
    channel_order: Mapping[str, tuple[int, ...]]
    weights_path: str
    # size name -> its width: a float, or {group key: float} for per-group widths
    sizes: Mapping[str, Any] = field(default_factory=dict)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and tensors to plain JSON values."""
    torch = sys.modules.get("torch")  # nothing is a tensor or a module before torch is loaded
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if torch is None or not isinstance(getattr(obj, f.name), torch.nn.Module)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    return obj
