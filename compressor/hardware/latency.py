"""Latency of one model on one profile: measured where this machine can, predicted (and labelled) where not.

This is the only place that decides between measuring and predicting, so the
pipeline, the CLI and the benchmarks all get the same kind of figure for the same
profile. The budget rule itself is `compressor.budget.Budget.fits`; a report
produced here with a budget records its verdict and margin beside the figures.

`remeasure_in_fresh_process` times an ONNX file again in a new Python process
(a new ONNX Runtime session, cold caches, its own thread pool): the check that a
budget claim survives a second, independent measurement. `steadier` keeps the lower
of a first measurement and such a second one: the figure a relative budget rests on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..budget import Budget
from ..errors import BackendUnavailableError, ConfigError
from ..files import first_line
from ..types import HardwareProfile, LatencyReport
from .backends import Backend, get_backend
from .measure import unavailable_reason
from .predict import LatencyModel, predict_latency

log = logging.getLogger(__name__)

__all__ = ["latency_report", "remeasure_in_fresh_process", "steadier", "with_prediction"]


def with_prediction(measured: LatencyReport, predicted_ms: float, method: str) -> LatencyReport:
    """`measured` with a prediction for the same model recorded beside it, and the
    prediction's error relative to the measured statistic."""
    actual = measured.value()
    error = (predicted_ms - actual) / actual if actual > 0 else float("nan")
    env = {**measured.env, "predicted_ms": predicted_ms, "predicted_by": method,
           "prediction_error": error}
    return dataclasses.replace(measured, env=env)


def latency_report(profile: HardwareProfile, input_shape: Sequence[int], *, onnx_path: str | Path | None = None,
                   module: nn.Module | None = None, predictor: LatencyModel | None = None,
                   budget: Budget | None = None, backend: Backend | None = None,
                   progress: bool = False) -> LatencyReport:
    """The latency of one model on `profile`: measured if this machine can, else predicted.

    - measurable here: the backend times `onnx_path` (ONNX Runtime, TensorRT) or
      `module` (torch-cuda; a CUDA profile given `onnx_path` times that file with ONNX Runtime's
      CUDA provider where installed, and the module in PyTorch, labelled so, where not); if `module` and `predictor` are given too, the
      prediction is reported beside the measurement (`env['predicted_ms']`);
    - not measurable: `predictor` (or the datasheet roofline) predicts from
      `module`, ``measured=False``.

    With `budget`, its verdict and margin are recorded in `env`. `backend` replaces
    the profile's runtime (tests use a fake one with fixed timings). Raises
    `BackendUnavailableError` when neither measuring nor predicting is possible.
    """
    runtime = backend or get_backend(profile.backend)
    reason = runtime.unavailable_reason() if profile.measured else unavailable_reason(profile)
    if reason is None and backend is None and profile.backend == "torch-cuda" and onnx_path is not None:
        report = _on_cuda(profile, input_shape, onnx_path, module, runtime, progress)
        if module is not None and predictor is not None:
            report = with_prediction(report, predictor.predict_ms(module, input_shape), predictor.method)
    elif reason is None:
        artifact = module if profile.backend == "torch-cuda" else onnx_path
        if artifact is None:
            raise ValueError(f"profile {profile.name!r} is measured with {profile.backend}: pass "
                             f"{'module' if profile.backend == 'torch-cuda' else 'onnx_path'}.")
        report = runtime.measure(artifact, profile, input_shape, progress=progress)
        if module is not None and predictor is not None:
            report = with_prediction(report, predictor.predict_ms(module, input_shape), predictor.method)
    else:
        if module is None:
            raise BackendUnavailableError(f"{reason}; pass the PyTorch module to predict its latency instead")
        if predictor is None and profile.device is None:
            raise BackendUnavailableError(f"{reason}, and profile {profile.name!r} has no [device] "
                                          f"datasheet figures to predict from")
        report = predict_latency(module, input_shape, profile, calibration=predictor)
        report = dataclasses.replace(report, env={**report.env, "not_measured_because": reason})
    if budget is not None:
        env: dict[str, Any] = {**report.env, "budget_ms": budget.ms, "budget_margin": budget.margin(report),
                               "meets_budget": budget.fits(report)}
        report = dataclasses.replace(report, env=env)
    return report


def _on_cuda(profile: HardwareProfile, input_shape: Sequence[int], onnx_path: str | Path,
             module: nn.Module | None, torch_cuda: Backend, progress: bool) -> LatencyReport:
    """A CUDA profile times what is served, the exported ONNX file, with ONNX Runtime's CUDA provider;
    where this ONNX Runtime has none (the CPU wheel), PyTorch times the module instead, labelled so."""
    ort_cuda = get_backend("onnxruntime-cuda")
    why_not = ort_cuda.unavailable_reason()
    if why_not is None:
        report = ort_cuda.measure(onnx_path, profile, input_shape, progress=progress)
        return dataclasses.replace(report, env={**report.env, "profile_backend": profile.backend})
    if module is None:
        raise BackendUnavailableError(f"{why_not}; pass the PyTorch module to time it in PyTorch instead")
    report = torch_cuda.measure(module, profile, input_shape, progress=progress)
    return dataclasses.replace(report, env={**report.env, "timed_in": "PyTorch, not the exported ONNX",
                                            "onnxruntime_cuda_unavailable": why_not})


def remeasure_in_fresh_process(onnx_path: str | Path, profile: HardwareProfile, input_shape: Sequence[int],
                               timeout_s: float = 600) -> LatencyReport:
    """Measure `onnx_path` on `profile` again in a new Python process.

    The child loads the profile from its file (so it times exactly what this process
    timed), opens its own ONNX Runtime session and prints the report as JSON.
    """
    if profile.backend == "torch-cuda":
        raise ConfigError(f"profile {profile.name!r} times PyTorch modules; a fresh-process re-measurement "
                          f"needs an ONNX or TensorRT profile")
    request = {"onnx": str(onnx_path), "profile": profile.path or profile.name, "shape": list(input_shape),
               "profile_fields": _profile_fields(profile)}
    try:
        done = subprocess.run([sys.executable, "-m", "compressor.hardware.remeasure"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BackendUnavailableError(f"re-measuring {onnx_path} took over {timeout_s:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendUnavailableError(f"re-measuring {onnx_path} in a fresh process failed: {tail}")
    try:
        return LatencyReport.from_dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError) as e:
        raise BackendUnavailableError(f"re-measurement of {onnx_path} printed no report: {first_line(e)}") from None


def steadier(first: LatencyReport, onnx_path: str | Path, profile: HardwareProfile,
             input_shape: Sequence[int]) -> LatencyReport:
    """`first`, or the same file measured again in a fresh process where that is lower.

    A relative budget (0.5x) is a fraction of one teacher figure, and interference only ever
    adds time: on a shared machine a process can run 1.5-3x slower for seconds at a time
    (BENCHMARKS.md "Measurement stability"), and a teacher timed during such a burst would
    loosen every budget by as much. A prediction, or a profile this machine cannot time in
    another process, is returned as it is."""
    if not first.measured or profile.backend == "torch-cuda":
        return first
    try:
        second = remeasure_in_fresh_process(onnx_path, profile, input_shape)
    except Exception as e:  # noqa: BLE001 - the first figure still stands
        log.warning("teacher not re-measured: %s", first_line(e))
        return first
    kept = min(first, second, key=lambda r: r.value())
    return dataclasses.replace(kept, env={**kept.env, "measurements_ms": [first.value(), second.value()],
                                          "kept": "the lower of two measurements (the second in a fresh process)"})


def _profile_fields(profile: HardwareProfile) -> dict[str, Any]:
    """The timing settings, so a profile changed in memory (`override_profile`) is timed as changed."""
    keys = ("threads", "batch_size", "warmup_runs", "warmup_seconds", "repeats", "min_seconds", "stat")
    return {k: getattr(profile, k) for k in keys}
