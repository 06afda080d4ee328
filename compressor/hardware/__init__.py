"""Hardware: profiles (which target, how to time it), measured and predicted latency, CPU features, TensorRT.

- `profiles`: one validated TOML file per target in ``compressor/profiles/`` (`load_profile`,
  `list_profiles`, `round_channels`);
- `measure`: timing on this machine (ONNX Runtime or OpenVINO on the CPU; PyTorch CUDA
  and TensorRT where present) with one shared warm-up / repeat / noise policy (`timing`);
- `layers` + `predict`: per-layer costs, a cost model fitted on this host, and a
  datasheet roofline for targets we cannot reach;
- `latency`: measured-or-predicted reports (the one place that decides which), and
  re-measurement in a fresh process;
- `isa`: the CPU's INT8-relevant instruction set, as one class name;
- `tensorrt`: the one TensorRT engine builder (export's engine files, the backend's timing).

Search and distillation both need latency, so this package sits below the
stages and imports none of them.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it. Loaded on first use (PEP 562), not on `import
# compressor.hardware`: most submodules import torch, and the child process that re-times an ONNX
# file (`remeasure`) needs none of them, so it starts in 0.3 s rather than 2.5 s.
_WHERE = {
    "cpu_model": "ort_cpu", "onnx_input_shape": "ort_cpu",
    "build_candidate": "candidates", "calibration_candidates": "candidates", "sample_arch": "candidates",
    "sample_candidates": "candidates",
    "profile_report_lines": "display", "profiles_table": "display", "report_table": "display",
    "CPU_CLASSES": "isa", "classify": "isa", "host_cpu_class": "isa",
    "latency_report": "latency", "remeasure_in_fresh_process": "latency", "steadier": "latency",
    "with_prediction": "latency",
    "LayerCost": "layers", "layer_costs": "layers",
    "is_measurable": "measure", "measure_module_cuda": "measure", "measure_onnx": "measure",
    "unavailable_reason": "measure",
    "LatencyModel": "predict", "LatencyPredictor": "predict", "RooflinePredictor": "predict",
    "needs_calibration": "predict", "predict_latency": "predict", "predictor_for": "predict",
    "roofline_ms": "predict",
    "DEFAULT_PROFILE": "profiles", "list_profiles": "profiles", "load_profile": "profiles",
    "QUICK_TIMING": "profiles", "override_profile": "profiles", "quick_timing": "profiles",
    "profiles_dir": "profiles", "round_channels": "profiles",
    "measure_timed_run": "timing",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "CPU_CLASSES",
    "DEFAULT_PROFILE",
    "LatencyModel",
    "LatencyPredictor",
    "LayerCost",
    "RooflinePredictor",
    "build_candidate",
    "calibration_candidates",
    "classify",
    "cpu_model",
    "host_cpu_class",
    "is_measurable",
    "latency_report",
    "remeasure_in_fresh_process",
    "layer_costs",
    "list_profiles",
    "load_profile",
    "measure_module_cuda",
    "measure_onnx",
    "measure_timed_run",
    "onnx_input_shape",
    "QUICK_TIMING",
    "override_profile",
    "quick_timing",
    "predict_latency",
    "needs_calibration",
    "predictor_for",
    "profile_report_lines",
    "profiles_dir",
    "profiles_table",
    "report_table",
    "roofline_ms",
    "round_channels",
    "sample_arch",
    "sample_candidates",
    "steadier",
    "unavailable_reason",
    "with_prediction",
]
