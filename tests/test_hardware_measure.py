"""Measurement: the shared timing policy (with fake timings), ONNX Runtime on this CPU,
unavailable backends, and budgets judged on measured or predicted latency.

No test asserts how fast anything runs: only orderings, counts and the rules.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.budget import Budget
from compressor.errors import BackendUnavailableError, ConfigError
from compressor.hardware import (
    is_measurable,
    latency_report,
    load_profile,
    measure_module_cuda,
    measure_onnx,
    measure_timed_run,
    onnx_input_shape,
    override_profile,
    profile_report_lines,
)
from compressor.hardware import backends
from compressor.hardware.backends import OrtCudaBackend, TensorRTBackend, cpu_model
from compressor.hardware.testing import FixedTimingsBackend, tiny_onnx
from compressor.types import HardwareProfile

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_ORT_CUDA = OrtCudaBackend().unavailable_reason() is None


def quick(name: str = "host-cpu-1t", **changes: object) -> HardwareProfile:
    """A profile that measures in milliseconds: few runs, no minimum time."""
    settings = dict(warmup_runs=2, warmup_seconds=0.0, repeats=20, min_seconds=0.0)
    return override_profile(load_profile(name), **{**settings, **changes})


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


# ----------------------------------------------------------------------------- timing policy


def test_fixed_timings_give_exact_statistics() -> None:
    times = itertools.cycle([1e-3, 2e-3, 3e-3, 4e-3])
    report = measure_timed_run(lambda: next(times), quick(repeats=400), noisy_cov=10.0)
    assert report.samples == 400 and report.measured
    assert report.p50_ms == pytest.approx(2.5)
    assert report.mean_ms == pytest.approx(2.5)
    assert report.p50_ms <= report.p90_ms <= report.p99_ms <= 4.0
    assert report.cov == pytest.approx(report.std_ms / report.mean_ms)
    assert report.env["warmup_runs"] == 2 and not report.warnings


def test_quiet_series_is_measured_once() -> None:
    calls = []
    report = measure_timed_run(lambda: calls.append(1) or 1e-3, quick(repeats=50))
    assert len(calls) == 2 + 50 and report.cov == 0.0 and "remeasured" not in report.env


def test_outliers_under_a_median_budget_are_explained_not_remeasured() -> None:
    # one run in 20 is 50x slower: a huge CoV, but the median is untouched
    times = itertools.cycle([1e-3] * 19 + [50e-3])
    calls = []
    report = measure_timed_run(lambda: calls.append(1) or next(times), quick(repeats=40))
    assert len(calls) == 2 + 40 and "remeasured" not in report.env
    assert report.cov > 1.0 and report.p50_ms == pytest.approx(1.0)
    (warning,) = report.warnings
    assert "outliers" in warning and "p50 is unaffected" in warning and "5.0% of runs" in warning


def test_outliers_under_a_tail_budget_trigger_one_remeasure() -> None:
    # the same series judged by p99: every slow run moves the statistic, so it is measured again
    times = itertools.cycle([1e-3] * 19 + [50e-3])
    report = measure_timed_run(lambda: next(times), quick(repeats=40, stat="p99"))
    assert report.env["remeasured"] is True and report.env["cov_first"] > 1.0
    assert report.samples in (40, 80)
    (warning,) = report.warnings
    assert "re-measured with 80 runs" in warning and "outliers" in warning


def test_a_spread_body_is_remeasured_under_a_median_budget() -> None:
    times = itertools.cycle([1e-3, 2e-3, 3e-3])  # the body itself is spread: the median is in doubt
    report = measure_timed_run(lambda: next(times), quick(repeats=30))
    assert report.env["remeasured"] is True
    (warning,) = report.warnings
    assert "noisy machine" in warning and "unreliable" not in warning


def test_a_busy_machine_is_reported_as_such() -> None:
    times = itertools.cycle([1e-3, 2e-3, 3e-3])  # the whole distribution is spread
    report = measure_timed_run(lambda: next(times), quick(repeats=30, stat="p90"))
    (warning,) = report.warnings
    assert "noisy machine" in warning and "p90 is unreliable" in warning


def test_warmup_by_count_and_time() -> None:
    calls = []
    profile = quick(warmup_runs=3, warmup_seconds=0.02, repeats=1)
    measure_timed_run(lambda: calls.append(1) or 1e-3, profile)
    assert len(calls) > 3 + 1  # 20 ms of wall clock is more than three no-op runs


# ----------------------------------------------------------------------------- ONNX Runtime


def test_host_cpu_is_measurable_and_predicted_targets_are_not() -> None:
    assert is_measurable(load_profile("host-cpu-1t")) and is_measurable(load_profile("host-cpu"))
    assert not is_measurable(load_profile("jetson-orin-nano"))
    assert is_measurable(load_profile("cuda-gpu")) == HAS_CUDA


def test_real_ort_measurement_of_a_tiny_model(onnx_file: Path) -> None:
    report = measure_onnx(onnx_file, quick(), (1, 8, 8))
    assert report.measured and report.profile == "host-cpu-1t" and report.stat == "p50"
    assert 0 < report.p50_ms <= report.p90_ms <= report.p99_ms
    assert report.samples >= 20
    assert report.mean_ms > 0 and report.std_ms >= 0 and report.cov >= 0
    env = report.env
    assert env["intra_op_threads"] == 1 and env["inter_op_threads"] == 1
    assert env["execution_mode"] == "sequential"
    assert env["ort_version"] and env["cpu_model"] == cpu_model() and env["batch_size"] == 1
    lines = profile_report_lines(report, Budget(1e3, '1s', 'host-cpu-1t'))
    assert lines[0].startswith("host-cpu-1t: measured") and any("meets budget" in ln for ln in lines)


def test_all_cores_and_profile_batch(onnx_file: Path) -> None:
    report = measure_onnx(onnx_file, quick("host-cpu", batch_size=3), (1, 8, 8))
    assert report.batch_size == 3 and report.env["batch_size"] == 3
    assert report.env["intra_op_threads"] == report.env["usable_cores"] >= 1


def test_fixed_batch_model_refuses_another_batch(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    assert measure_onnx(path, quick(repeats=2), (1, 8, 8)).samples >= 2
    with pytest.raises(ConfigError, match="fixed batch of 1 but profile 'host-cpu-1t' times batch 4"):
        measure_onnx(path, quick(batch_size=4), (1, 8, 8))


def test_wrong_input_shape_and_missing_file(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dimension 2 = 8 but the input shape gives 9"):
        measure_onnx(onnx_file, quick(), (1, 9, 8))
    with pytest.raises(ConfigError, match="rank"):
        measure_onnx(onnx_file, quick(), (8, 8))
    with pytest.raises(ConfigError, match="ONNX file not found"):
        measure_onnx(tmp_path / "missing.onnx", quick(), (1, 8, 8))


def test_fresh_process_remeasurement_times_the_file_without_loading_torch(onnx_file: Path, tmp_path: Path) -> None:
    """The child that re-times an exported file (every run's teacher and selected size) uses ONNX
    Runtime alone: it reports the same profile's figures, and torch is never imported there."""
    import json
    import subprocess
    import sys

    from compressor.hardware import remeasure_in_fresh_process

    report = remeasure_in_fresh_process(onnx_file, quick(), (1, 8, 8))
    assert report.measured and report.profile == "host-cpu-1t" and report.samples >= 20
    assert report.env["backend"] == "onnxruntime-cpu" and report.env["intra_op_threads"] == 1
    probe = ("import json, runpy, sys; sys.argv = ['remeasure']\n"
             "try:\n    runpy.run_module('compressor.hardware.remeasure', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(json.dumps({'torch': 'torch' in sys.modules}))")
    request = {"onnx": str(onnx_file), "profile": "host-cpu-1t", "shape": [1, 8, 8],
               "profile_fields": {"warmup_runs": 1, "warmup_seconds": 0.0, "repeats": 5, "min_seconds": 0.0}}
    done = subprocess.run([sys.executable, "-c", probe], input=json.dumps(request), capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    first, last = done.stdout.strip().splitlines()[-2:]
    assert json.loads(first)["samples"] >= 5 and json.loads(last) == {"torch": False}
    # a file it cannot time still fails with the usual reason
    with pytest.raises(BackendUnavailableError, match="ONNX file not found"):
        remeasure_in_fresh_process(tmp_path / "missing.onnx", quick(), (1, 8, 8))


def test_input_shape_is_read_from_the_onnx_file(onnx_file: Path, tmp_path: Path) -> None:
    assert onnx_input_shape(onnx_file) == (1, 8, 8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        onnx_input_shape(bad)


def test_predicted_profile_cannot_be_measured(onnx_file: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="predicted only"):
        measure_onnx(onnx_file, load_profile("t4-tensorrt-fp16"), (1, 8, 8))


# ----------------------------------------------------------------------------- GPU backends


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised without a GPU")
def test_cuda_backend_raises_without_gpu() -> None:
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        measure_module_cuda(nn.Linear(4, 2), load_profile("cuda-gpu"), (4,))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_backend_measures_a_module() -> None:
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    report = measure_module_cuda(module, quick("cuda-gpu"), (16,))
    assert report.measured and 0 < report.p50_ms <= report.p90_ms <= report.p99_ms
    assert next(module.parameters()).device.type == "cpu"  # the caller's module is not moved


class _StandInGpu:
    """torch-cuda that reports itself available and times a module with fixed figures."""

    name = "torch-cuda"

    def __init__(self) -> None:
        self.timed: list[object] = []

    def unavailable_reason(self) -> None:
        return None

    def measure(self, artifact, profile, input_shape, progress=False):
        self.timed.append(artifact)
        return measure_timed_run(lambda: 1e-3, profile, {"backend": "torch-cuda"})


class _OrtCudaOnCpu(OrtCudaBackend):
    """The ONNX Runtime CUDA backend as it behaves where its provider exists, run on the CPU provider."""

    provider = "CPUExecutionProvider"

    def unavailable_reason(self) -> None:
        return None


@pytest.mark.skipif(HAS_ORT_CUDA, reason="checks the reason given by ONNX Runtime's CPU build")
def test_ort_cuda_backend_names_the_missing_provider() -> None:
    reason = OrtCudaBackend().unavailable_reason()
    assert "CUDAExecutionProvider" in reason and "onnxruntime-gpu" in reason


def test_cuda_profile_times_the_onnx_file_with_onnx_runtime_where_it_can(
        onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = _StandInGpu()
    monkeypatch.setitem(backends._BACKENDS, "torch-cuda", gpu)
    monkeypatch.setitem(backends._BACKENDS, "onnxruntime-cuda", _OrtCudaOnCpu())
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    report = latency_report(quick("cuda-gpu"), (1, 8, 8), onnx_path=onnx_file, module=module)
    assert report.measured and report.env["backend"] == "onnxruntime-cuda"
    assert report.env["onnx_precision"] == "fp32" and report.env["profile_backend"] == "torch-cuda"
    assert gpu.timed == []  # the served file was timed, not the PyTorch module


def test_cuda_profile_without_onnx_runtime_cuda_times_the_module_labelled(
        onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = _StandInGpu()
    monkeypatch.setitem(backends._BACKENDS, "torch-cuda", gpu)
    monkeypatch.setattr(OrtCudaBackend, "unavailable_reason", lambda self: "no CUDAExecutionProvider")
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    report = latency_report(quick("cuda-gpu"), (1, 8, 8), onnx_path=onnx_file, module=module)
    assert gpu.timed == [module]
    assert report.env["timed_in"] == "PyTorch, not the exported ONNX"
    assert report.env["onnxruntime_cuda_unavailable"] == "no CUDAExecutionProvider"
    with pytest.raises(BackendUnavailableError, match="no CUDAExecutionProvider; pass the PyTorch module"):
        latency_report(quick("cuda-gpu"), (1, 8, 8), onnx_path=onnx_file)


def test_measure_module_cuda_rejects_cpu_profiles() -> None:
    with pytest.raises(ConfigError, match="not torch-cuda"):
        measure_module_cuda(nn.Linear(4, 2), load_profile("host-cpu-1t"), (4,))


@pytest.mark.skipif(HAS_TRT, reason="checks the error raised without TensorRT")
def test_tensorrt_backend_unavailable(onnx_file: Path) -> None:
    assert TensorRTBackend().unavailable_reason().startswith("TensorRT: not available on this machine (")
    with pytest.raises(BackendUnavailableError, match="TensorRT: not available on this machine"):
        TensorRTBackend().measure(onnx_file, load_profile("t4-tensorrt-fp16"), (1, 8, 8))


# ----------------------------------------------------------------------------- budgets


def fixed_report(times_ms: list[float], stat: str = "p50", repeats: int = 100):
    return latency_report(quick(stat=stat, repeats=repeats), (1, 8, 8), onnx_path="unused.onnx",
                          backend=FixedTimingsBackend(times_ms))


def test_budget_applies_to_the_profiles_statistic() -> None:
    report = fixed_report([2.0])  # identical timings: no spread
    assert report.measured and report.p50_ms == pytest.approx(2.0) and report.spread_ms == 0.0
    assert Budget(2.0, "2ms", "host-cpu-1t").fits(report)  # at the budget is within it
    assert not Budget(1.99, "1.99ms", "host-cpu-1t").fits(report)
    assert Budget(4.0, "4ms", "host-cpu-1t").margin(report) == pytest.approx(0.5)
    assert Budget(1.0, "1ms", "host-cpu-1t").margin(report) == pytest.approx(-1.0)

    tail = fixed_report([1.0] * 8 + [10.0] * 2, stat="p90")  # p50 = 1 ms, p90 = 10 ms
    assert tail.stat == "p90" and tail.p50_ms == pytest.approx(1.0) and tail.p90_ms == pytest.approx(10.0)
    assert not Budget(5.0, "5ms", "host-cpu-1t", "p90").fits(tail)
    assert Budget(10.0, "10ms", "host-cpu-1t", "p90").fits(dataclasses.replace(tail, spread_ms=0.0))
    assert Budget(5.0, "5ms", "host-cpu-1t", "p50").fits(dataclasses.replace(tail, spread_ms=0.0))


def test_budget_margin_recorded_in_report() -> None:
    report = latency_report(quick(), (1, 8, 8), onnx_path="x.onnx", budget=Budget(4.0, "4ms", "host-cpu-1t"),
                            backend=FixedTimingsBackend([1.0]))
    assert report.env["meets_budget"] is True and report.env["budget_margin"] == pytest.approx(0.75)


def test_bad_budget_is_rejected() -> None:
    with pytest.raises(ConfigError, match="must be a positive latency"):
        Budget(0.0, "0ms", "host-cpu-1t")


def test_measurable_profile_is_measured_and_prediction_sits_beside_it() -> None:
    class Half:
        method = "fixed"

        def predict_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
            return 0.5

    report = latency_report(quick(), (4,), onnx_path="x.onnx", module=nn.Linear(4, 2), predictor=Half(),
                            backend=FixedTimingsBackend([1.0]))
    assert report.measured and report.value() == pytest.approx(1.0)
    assert report.env["predicted_ms"] == 0.5 and report.env["prediction_error"] == pytest.approx(-0.5)
    assert any("predicted (fixed) 0.5 ms" in ln for ln in profile_report_lines(report))


def test_unmeasurable_profile_is_predicted_with_margin() -> None:
    module = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    budget = Budget(5.0, "5ms", "jetson-orin-nano")
    report = latency_report(load_profile("jetson-orin-nano"), (1, 8, 8), module=module, budget=budget)
    assert not report.measured and report.samples == 0 and report.env["method"] == "roofline"
    assert "predicted only" in report.env["not_measured_because"]
    assert report.spread_ms == 0.0  # a prediction is judged as it stands
    assert report.env["budget_margin"] == pytest.approx(budget.margin(report))
    assert any("(predicted)" in ln for ln in profile_report_lines(report, budget))


def test_unmeasurable_without_module_or_figures() -> None:
    with pytest.raises(BackendUnavailableError, match="pass the PyTorch module"):
        latency_report(load_profile("raspberry-pi-5"), (1, 8, 8), onnx_path="x.onnx")
    if not HAS_CUDA:
        with pytest.raises(BackendUnavailableError, match="no \\[device\\] datasheet figures"):
            latency_report(load_profile("cuda-gpu"), (4,), module=nn.Linear(4, 2))
