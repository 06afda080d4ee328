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

from .backends import cpu_model, onnx_input_shape
from .candidates import build_candidate, calibration_candidates, sample_arch, sample_candidates
from .display import profile_report_lines, profiles_table, report_table
from .isa import CPU_CLASSES, classify, host_cpu_class
from .latency import latency_report, remeasure_in_fresh_process, steadier, with_prediction
from .layers import LayerCost, layer_costs
from .measure import (
    is_measurable,
    measure_module_cuda,
    measure_onnx,
    unavailable_reason,
)
from .predict import (
    LatencyModel,
    LatencyPredictor,
    RooflinePredictor,
    needs_calibration,
    predict_latency,
    predictor_for,
    roofline_ms,
)
from .profiles import (
    DEFAULT_PROFILE,
    list_profiles,
    load_profile,
    QUICK_TIMING,
    override_profile,
    quick_timing,
    profiles_dir,
    round_channels,
)
from .timing import measure_timed_run

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
