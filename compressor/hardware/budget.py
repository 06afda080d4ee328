"""Budgets judged against latency: measured where we can, predicted (and labelled) where not.

The rule the pipeline follows: on a profile this machine can measure, the final
choice of servable sizes uses *measured* latency only; a prediction may steer
the search but never decides whether a model meets its budget. On a
predicted-only profile the prediction is all there is, so the report carries the
margin to the budget, and the caller shows it as predicted.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import BackendUnavailableError
from ..types import HardwareProfile, LatencyReport
from .backends import Backend, get_backend
from .measure import unavailable_reason
from .predict import LatencyModel, predict_latency

__all__ = ["budget_margin", "latency_report", "meets_budget", "with_prediction"]


def meets_budget(report: LatencyReport, budget_ms: float, *, require_measured: bool = False) -> bool:
    """True when the report's statistic (its profile's p50/p90/p99) is at most `budget_ms`.

    With ``require_measured=True`` (final selection on a measurable profile) a
    predicted report is refused with ValueError instead of judged.
    """
    if not budget_ms > 0:
        raise ValueError(f"budget_ms must be positive but got {budget_ms!r}.")
    if require_measured and not report.measured:
        raise ValueError(f"profile {report.profile!r} can be measured here: judge the budget on a "
                         f"measured latency, not a prediction.")
    return report.value() <= budget_ms


def budget_margin(report: LatencyReport, budget_ms: float) -> float:
    """Headroom as a fraction of the budget: 0.2 = 20 % under budget, -0.1 = 10 % over."""
    if not budget_ms > 0:
        raise ValueError(f"budget_ms must be positive but got {budget_ms!r}.")
    return (budget_ms - report.value()) / budget_ms


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
                   budget_ms: float | None = None, backend: Backend | None = None,
                   progress: bool = False) -> LatencyReport:
    """The latency of one model on `profile`: measured if this machine can, else predicted.

    - measurable here: the backend times `onnx_path` (ONNX Runtime, TensorRT) or
      `module` (torch-cuda); if `module` and `predictor` are given too, the
      prediction is reported beside the measurement (`env['predicted_ms']`);
    - not measurable: `predictor` (or the datasheet roofline) predicts from
      `module`, ``measured=False``; with `budget_ms` the margin is recorded in
      `env['budget_margin']`.

    `backend` replaces the profile's runtime (tests use a fake one with fixed
    timings). Raises `BackendUnavailableError` when neither is possible.
    """
    runtime = backend or get_backend(profile.backend)
    reason = runtime.unavailable_reason() if profile.measured else unavailable_reason(profile)
    if reason is None:
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
    if budget_ms is not None:
        env: dict[str, Any] = {**report.env, "budget_ms": budget_ms,
                               "budget_margin": budget_margin(report, budget_ms),
                               "meets_budget": meets_budget(report, budget_ms)}
        report = dataclasses.replace(report, env=env)
    return report
