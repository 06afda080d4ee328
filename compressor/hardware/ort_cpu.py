"""ONNX Runtime on this machine's CPU, and what the machine is: the backend that times an ONNX file
on the host, without PyTorch.

Kept free of torch so a fresh process that only re-times an exported file (`remeasure`) starts in
a fraction of a second instead of the 2 s that importing torch takes (its second measurement
of the teacher and of the selected size runs in every `compress`). `backends` re-exports all of it.
"""
from __future__ import annotations

import functools
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import BackendUnavailableError, ConfigError, ExportError
from ..types import HardwareProfile, LatencyReport
from .timing import measure_timed_run

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OrtCpuBackend", "cpu_channel_block", "cpu_model", "onnx_input_shape", "usable_cores"]


# ----------------------------------------------------------------------------- environment


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ('model name' on x86, 'Model' or
    'Hardware' on ARM boards), else what `platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == key and v.strip():
                return v.strip()
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def cpu_channel_block() -> int:
    """Channels ONNX Runtime's CPU convolutions compute per block on this CPU: the fp32
    SIMD width MLAS's NCHWc kernels use (16 with AVX-512, 8 with AVX2), else 1
    (no blocking, e.g. ARM64). Layers are costed with channels rounded up to it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 1
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    if "avx512f" in flags:
        return 16
    if "avx2" in flags:
        return 8
    return 1


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask respects containers and taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _batch_shape(profile: HardwareProfile, input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"input shape must be positive per-sample dimensions but got {shape}")
    return (profile.batch_size, *shape)


# ----------------------------------------------------------------------------- ONNX Runtime

_ORT_DTYPES: Mapping[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def onnx_input_shape(onnx_path: str | Path) -> tuple[int, ...]:
    """The per-sample input shape stored in an ONNX file (batch dimension dropped).

    Raises `ConfigError` when a non-batch dimension is symbolic: then the caller
    must say the shape (``--input-shape``).
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ConfigError(f"{path}: ONNX file not found")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError, ValueError, ... on a bad file
        raise ConfigError(f"{path}: not a readable ONNX model: {e}") from None
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(f"{path}: has {len(inputs)} inputs; latency is measured for one-input models")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    if not shape or any(d is None or d < 1 for d in shape):
        raise ConfigError(f"{path}: input {inputs[0].name!r} has symbolic non-batch dimensions "
                          f"{[d.dim_param or d.dim_value for d in dims]}; give the input shape explicitly")
    return tuple(int(d) for d in shape)


class OrtCpuBackend:
    """ONNX Runtime's CPU provider, threads pinned as the profile says.

    intra-op threads = the profile's (0 = every usable core), inter-op = 1 and
    sequential execution: small models gain nothing from running branches in
    parallel, and a second pool would fight the first for the same cores.
    """

    name = "onnxruntime-cpu"
    provider = "CPUExecutionProvider"

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "ONNX Runtime: not installed (pip install onnxruntime)"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return "ONNX Runtime: no CPUExecutionProvider in this build"
        return None

    def session(self, onnx_path: str | Path, profile: HardwareProfile) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = profile.threads or usable_cores()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT's warnings are not ours to print
        try:
            return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=[self.provider])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            raise ExportError(f"{onnx_path}: ONNX Runtime cannot load the model: {e}") from None

    def feed(self, session: Any, onnx_path: str | Path, profile: HardwareProfile,
             input_shape: Sequence[int]) -> dict[str, np.ndarray]:
        """One random input batch matching the model's single input."""
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"{onnx_path}: has {len(inputs)} inputs; latency is measured for "
                              f"one-input models")
        meta = inputs[0]
        shape = _batch_shape(profile, input_shape)
        if len(meta.shape) != len(shape):
            raise ConfigError(f"{onnx_path}: input {meta.name!r} has rank {len(meta.shape)} "
                              f"({meta.shape}) but the input shape {tuple(input_shape)} plus a batch "
                              f"dimension has rank {len(shape)}")
        for axis, (want, have) in enumerate(zip(shape, meta.shape)):
            if isinstance(have, int) and have != want:
                what = (f"a fixed batch of {have} but profile {profile.name!r} times batch {want}; "
                        f"export with a dynamic batch dimension") if axis == 0 else \
                       f"dimension {axis} = {have} but the input shape gives {want}"
                raise ConfigError(f"{onnx_path}: input {meta.name!r} has {what}")
        dtype = _ORT_DTYPES.get(meta.type)
        if dtype is None:
            raise ConfigError(f"{onnx_path}: input type {meta.type} is not supported for timing")
        rng = np.random.default_rng(0)
        if np.issubdtype(dtype, np.floating):
            x = rng.standard_normal(shape).astype(dtype)
        else:  # indices, token ids, quantised pixels: small non-negative values are valid everywhere
            x = rng.integers(0, 2, size=shape).astype(dtype)
        return {meta.name: x}

    def measure(self, artifact: str | Path | nn.Module, profile: HardwareProfile,
                input_shape: Sequence[int], progress: bool = False) -> LatencyReport:
        if not isinstance(artifact, (str, Path)):
            raise ConfigError(f"profile {profile.name!r} ({self.name}) measures ONNX files, not modules")
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
        import onnxruntime as ort

        session = self.session(artifact, profile)
        feed = self.feed(session, artifact, profile, input_shape)
        run, clock = session.run, time.perf_counter

        def timed_run() -> float:
            t0 = clock()
            run(None, feed)
            return clock() - t0

        env = {"backend": self.name, "ort_version": ort.__version__,
               "intra_op_threads": profile.threads or usable_cores(), "inter_op_threads": 1,
               "execution_mode": "sequential", "cpu_model": cpu_model(), "usable_cores": usable_cores(),
               "batch_size": profile.batch_size, "precision": profile.precision,
               "input_shape": list(input_shape), **self._device_env()}
        return measure_timed_run(timed_run, profile, env, progress=progress)

    def _device_env(self) -> dict[str, Any]:
        return {}
