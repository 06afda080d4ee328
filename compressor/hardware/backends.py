"""Runtimes that can time a model: ONNX Runtime and OpenVINO on the CPU, ONNX Runtime and PyTorch on
CUDA, TensorRT.

Each backend turns an artefact (an ONNX file, an OpenVINO IR or an `nn.Module`) into a
*timed run* for `timing.measure_timed_run` and says what environment it measured in.
Optional runtimes (OpenVINO, CUDA, TensorRT) are imported only when used and raise
`BackendUnavailableError` with the reason when absent, so this module imports on
any machine.
"""
from __future__ import annotations

import copy
import functools
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError, ConfigError, ExportError
from ..types import HardwareProfile, LatencyReport
from .ort_cpu import OrtCpuBackend, _batch_shape, cpu_channel_block, cpu_model, onnx_input_shape, usable_cores
from .tensorrt import build_tensorrt_engine, tensorrt_available
from .timing import TimedRun, measure_timed_run

__all__ = [
    "Backend",
    "OpenVinoCpuBackend",
    "OrtCpuBackend",
    "OrtCudaBackend",
    "TensorRTBackend",
    "TorchCudaBackend",
    "cpu_channel_block",
    "cpu_model",
    "get_backend",
    "model_input_shape",
    "onnx_input_shape",
    "usable_cores",
]


class Backend(Protocol):
    """What `measure`/`latency_report` need from a runtime: availability, and a timing."""

    name: str

    def unavailable_reason(self) -> str | None:
        """None when this machine can measure with the backend now, else why not."""

    def measure(self, artifact: str | Path | nn.Module, profile: HardwareProfile,
                input_shape: Sequence[int], progress: bool = False) -> LatencyReport:
        """Time `artifact` (an ONNX path or an nn.Module, per backend) under `profile`."""


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime's CUDA execution provider (the `onnxruntime-gpu` wheel): the exported ONNX file
    timed on the GPU the way a server running it would run it.

    `session.run` returns outputs copied to host memory, so each timed run ends when the GPU's work
    has ended: the host clock times the work, not the launch. The ONNX file runs in the precision it
    was exported in (fp32): the report records that beside the profile's precision.
    """

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "ONNX Runtime: not installed (pip install onnxruntime-gpu)"
        if self.provider not in ort.get_available_providers():
            return ("ONNX Runtime: no CUDAExecutionProvider in this build (the onnxruntime-gpu wheel has it; "
                    f"this one has {', '.join(ort.get_available_providers())})")
        return None

    def _device_env(self) -> dict[str, Any]:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown (torch sees no CUDA device)"
        return {"gpu": gpu, "onnx_precision": "fp32"}


# ----------------------------------------------------------------------------- OpenVINO


def model_input_shape(path: str | Path) -> tuple[int, ...]:
    """The per-sample input shape stored in a model file: ONNX (`onnx_input_shape`),
    ONNX Runtime's `.ort` format, or an OpenVINO IR (`.xml`). Raises `ConfigError`
    when it cannot be read or a non-batch dimension is symbolic."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ort", ".xml"):
        return onnx_input_shape(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found")
    try:
        if suffix == ".ort":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            inputs = ort.InferenceSession(str(path), sess_options=opts,
                                          providers=["CPUExecutionProvider"]).get_inputs()
            dims: list[Any] = list(inputs[0].shape) if len(inputs) == 1 else []
        else:
            model = _openvino_core().read_model(str(path))
            inputs = model.inputs
            dims = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()] \
                if len(inputs) == 1 else []
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types on a bad file
        raise ConfigError(f"{path}: not a readable {suffix[1:]} model: {e}") from None
    if len(inputs) != 1:
        raise ConfigError(f"{path}: has {len(inputs)} inputs; latency is measured for one-input models")
    shape = dims[1:]
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(f"{path}: input has symbolic non-batch dimensions {dims}; give the input shape explicitly")
    return tuple(int(d) for d in shape)


@functools.cache
def _openvino_core() -> Any:
    """One OpenVINO `Core` per process: it discovers its device plugins once."""
    import openvino as ov

    return ov.Core()


class OpenVinoCpuBackend:
    """OpenVINO's CPU plugin, timing an ONNX file or an OpenVINO IR (`.xml` + `.bin`).

    Compiled for the profile's batch (a static shape, as an edge deployment compiles
    it and as the plugin optimises best), with one stream and the LATENCY hint (one
    request at a time, as ONNX Runtime is timed) and the profile's thread count. The
    inference precision is pinned to f32: on CPUs with bf16 units the plugin
    otherwise computes in bf16 by default, which would time, and answer with, a less
    exact model than the fp32 one a budget is set for.
    """

    name = "openvino-cpu"

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "OpenVINO: not installed (pip install openvino)"
        try:
            devices = _openvino_core().available_devices
        except Exception as e:  # noqa: BLE001 - a broken install fails in its own ways
            return f"OpenVINO: its runtime cannot start: {e}"
        if "CPU" not in devices:
            return f"OpenVINO: no CPU device in this build (devices: {', '.join(devices) or 'none'})"
        return None

    def compile(self, path: str | Path, *, threads: int | None = None,
                batch_shape: Sequence[int] | None = None) -> Any:
        """The model at `path` compiled for the CPU; `batch_shape` fixes its input's shape
        (None keeps the file's, e.g. a dynamic batch)."""
        import openvino as ov

        core = _openvino_core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and friends
            raise ExportError(f"{path}: OpenVINO cannot read the model: {e}") from None
        if len(model.inputs) != 1:
            raise ConfigError(f"{path}: has {len(model.inputs)} inputs; latency is measured for one-input models")
        if batch_shape is not None:
            try:
                model.reshape(ov.PartialShape([int(d) for d in batch_shape]))
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"{path}: input {model.inputs[0].get_any_name()!r} cannot take the shape "
                                  f"{tuple(batch_shape)}: {e}") from None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            return core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{path}: OpenVINO cannot compile the model for the CPU: {e}") from None

    def measure(self, artifact: str | Path | nn.Module, profile: HardwareProfile,
                input_shape: Sequence[int], progress: bool = False) -> LatencyReport:
        if isinstance(artifact, nn.Module):
            raise ConfigError(f"profile {profile.name!r} ({self.name}) measures ONNX or OpenVINO IR files, "
                              f"not modules")
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
        import openvino as ov

        shape = _batch_shape(profile, input_shape)
        threads = profile.threads or usable_cores()
        compiled = self.compile(artifact, threads=threads, batch_shape=shape)
        dtype = compiled.inputs[0].get_element_type().to_dtype()
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating) \
            else rng.integers(0, 2, size=shape).astype(dtype)  # token ids, indices: valid everywhere
        request = compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(x))  # set once: each run times inference, not the copy in
        infer, clock = request.infer, time.perf_counter

        def timed_run() -> float:
            t0 = clock()
            infer()
            return clock() - t0

        env = {"backend": self.name, "openvino_version": ov.get_version(), "inference_threads": threads,
               "streams": 1, "performance_hint": "LATENCY", "inference_precision": "f32",
               "cpu_model": cpu_model(), "usable_cores": usable_cores(), "batch_size": profile.batch_size,
               "precision": profile.precision, "input_shape": list(input_shape)}
        return measure_timed_run(timed_run, profile, env, progress=progress)


# ----------------------------------------------------------------------------- PyTorch on CUDA


def _cuda_timed_run(launch: Any, stream: Any = None) -> TimedRun:
    """A timed run by CUDA events: launches are asynchronous, so a host clock would
    time the launch, not the work. Synchronising on the end event makes each run
    complete before the next starts."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def timed_run() -> float:
        start.record(stream)
        launch()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in ms

    return timed_run


def _cuda_env(name: str, profile: HardwareProfile, input_shape: Sequence[int]) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"backend": name, "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "cpu_model": cpu_model(), "batch_size": profile.batch_size, "precision": profile.precision,
            "input_shape": list(input_shape)}


class TorchCudaBackend:
    """An `nn.Module` in eval mode on the first CUDA device, in the profile's precision."""

    name = "torch-cuda"

    def unavailable_reason(self) -> str | None:
        if not torch.cuda.is_available():
            return "torch-cuda: no CUDA GPU on this machine (torch.cuda.is_available() is False)"
        return None

    def measure(self, artifact: str | Path | nn.Module, profile: HardwareProfile,
                input_shape: Sequence[int], progress: bool = False) -> LatencyReport:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
        if not isinstance(artifact, nn.Module):
            raise ConfigError(f"profile {profile.name!r} ({self.name}) measures nn.Modules, "
                              f"not {type(artifact).__name__}")
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[profile.precision]
        device = torch.device("cuda")
        # a copy: moving the caller's module to the GPU in place would surprise it
        model = copy.deepcopy(artifact).to(device=device, dtype=dtype).eval()
        x = torch.randn(_batch_shape(profile, input_shape), device=device, dtype=dtype)
        with torch.inference_mode():
            torch.cuda.synchronize()
            report = measure_timed_run(_cuda_timed_run(functools.partial(model, x)), profile,
                                       _cuda_env(self.name, profile, input_shape), progress=progress)
        del model, x
        torch.cuda.empty_cache()
        return report


# ----------------------------------------------------------------------------- TensorRT


class TensorRTBackend:
    """A TensorRT engine built from the ONNX file in the profile's precision.

    Written against the TensorRT 10 Python API (named I/O tensors,
    ``execute_async_v3``) with buffers owned by PyTorch, so pycuda is not needed.
    Not exercised on the development machine (no GPU, no TensorRT); int8 expects
    an ONNX model that is already quantised (Q/DQ nodes), since calibration data
    is not available here.
    """

    name = "tensorrt"

    def unavailable_reason(self) -> str | None:
        available, reason = tensorrt_available()
        return None if available else reason

    def measure(self, artifact: str | Path | nn.Module, profile: HardwareProfile,
                input_shape: Sequence[int], progress: bool = False) -> LatencyReport:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
        if isinstance(artifact, nn.Module):
            raise ConfigError(f"profile {profile.name!r} ({self.name}) measures ONNX files, not modules")
        import tensorrt as trt

        shape = _batch_shape(profile, input_shape)
        with tempfile.TemporaryDirectory(prefix="trt-") as tmp:
            # the same builder as `export`'s engine files, fixed to the profile's batch and precision
            engine_path = build_tensorrt_engine(Path(artifact), Path(tmp) / "model.engine",
                                                fp16=profile.precision == "fp16", int8=profile.precision == "int8",
                                                min_batch=shape[0], opt_batch=shape[0], max_batch=shape[0])
            logger = trt.Logger(trt.Logger.WARNING)
            engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        context = engine.create_execution_context()
        buffers: list[torch.Tensor] = []  # kept alive for the engine's raw pointers
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, shape)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            t = torch.randn(tuple(context.get_tensor_shape(name)), device="cuda").to(dtype)
            buffers.append(t)
            context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.Stream()
        launch = lambda: context.execute_async_v3(stream.cuda_stream)  # noqa: E731
        env = {**_cuda_env(self.name, profile, input_shape), "tensorrt_version": trt.__version__}
        torch.cuda.synchronize()
        return measure_timed_run(_cuda_timed_run(launch, stream), profile, env, progress=progress)


_BACKENDS: Mapping[str, Backend] = {
    b.name: b for b in (OrtCpuBackend(), OrtCudaBackend(), OpenVinoCpuBackend(), TorchCudaBackend(), TensorRTBackend())
}


def get_backend(name: str) -> Backend:
    """The backend a profile names (names are validated when the profile is loaded)."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r} (known: {', '.join(_BACKENDS)})") from None
