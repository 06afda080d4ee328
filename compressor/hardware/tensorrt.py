"""TensorRT engines (FP16, optional INT8) built from the exported ONNX files: the one builder.

Used by `export` (an engine file per size, `--tensorrt`) and by the tensorrt
backend (an engine in the profile's precision and batch, to time).

UNTESTED HERE: the machines this project is developed on have no GPU and TensorRT
cannot be installed on them. The code below is written against the TensorRT 10
Python API (with the one TensorRT 8.6 difference handled: the explicit-batch flag)
and is exercised in tests only with a stand-in module; the first run on a GPU host
is its real test. Everywhere else it raises
`BackendUnavailableError("TensorRT: not available on this machine (...)")`, and the
report prints that line.

Design:
* the network comes from TensorRT's own ONNX parser, so the engine is built from the
  very file whose parity was checked, not from a second export;
* one optimisation profile spans the batch range (min/opt/max) the dynamic-batch
  ONNX allows; only the batch dimension may be dynamic;
* a timing cache (shared by every size in a run folder by default) makes the second
  and later builds reuse kernel timings, which dominate build time;
* INT8 uses explicit quantization: the QDQ file from `quantize_int8` carries the
  scales. Implicit INT8 calibration is deprecated in TensorRT 10, so `int8=True` on a
  model without Q/DQ nodes is refused instead of silently building FP16.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from ..errors import BackendUnavailableError, ExportError
from ..files import atomic_output

__all__ = ["TRT_UNAVAILABLE", "build_tensorrt_engine", "tensorrt_available"]

TRT_UNAVAILABLE = "TensorRT: not available on this machine"
DEFAULT_TIMING_CACHE = "tensorrt.timing.cache"
log = logging.getLogger(__name__)


def tensorrt_available() -> tuple[bool, str]:
    """(True, 'TensorRT 10.x') where an engine can be built, else (False, reason).

    The reason starts with `TRT_UNAVAILABLE`; the part in brackets says what is missing.
    """
    try:
        import tensorrt as trt
    except ImportError:
        return False, f"{TRT_UNAVAILABLE} (no tensorrt Python package)"
    if not _cuda_gpu_present():
        return False, f"{TRT_UNAVAILABLE} (no CUDA GPU)"
    return True, f"TensorRT {getattr(trt, '__version__', '?')}"


def _cuda_gpu_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU" here
        return False


def build_tensorrt_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    fp16: bool = True,
    int8: bool = False,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 32,
    timing_cache: str | Path | None = None,
    workspace_gib: float = 1.0,
) -> Path:
    """Build and serialize a TensorRT engine for `onnx_path`; return `out_path`.

    `timing_cache` is read if it exists and written back after the build; by default
    it is `tensorrt.timing.cache` next to `out_path`. Raises `BackendUnavailableError`
    where TensorRT or a GPU is missing, `ExportError` when parsing or building fails.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch but got "
                         f"{min_batch}, {opt_batch}, {max_batch}.")
    if workspace_gib <= 0:
        raise ValueError(f"workspace_gib must be positive but got {workspace_gib}.")
    if not onnx_path.is_file():
        raise ExportError(f"no ONNX file at {onnx_path}")
    if int8 and not _has_qdq(onnx_path):
        raise ExportError(f"{onnx_path.name} has no QuantizeLinear/DequantizeLinear nodes; build an INT8 "
                          "engine from the quantize_int8 output (explicit quantization)")
    available, reason = tensorrt_available()
    if not available:
        raise BackendUnavailableError(reason)

    import tensorrt as trt

    cache_path = Path(timing_cache) if timing_cache is not None else out_path.parent / DEFAULT_TIMING_CACHE
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16; TensorRT will choose FP32 kernels where faster")
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)

    config.add_optimization_profile(_batch_profile(builder, network, min_batch, opt_batch, max_batch))
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for {onnx_path.name} (see the TensorRT log above)")
    with atomic_output(out_path) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
    with atomic_output(cache_path) as tmp:
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return out_path


def _network_flags(trt: Any) -> int:
    """Explicit batch: required (as a flag) before TensorRT 10, the only mode since."""
    major = int(str(getattr(trt, "__version__", "10")).split(".")[0])
    if major >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _batch_profile(builder: Any, network: Any, min_batch: int, opt_batch: int, max_batch: int) -> Any:
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(int(d) for d in tensor.shape)
        if not dims or any(d < 0 for d in dims[1:]):
            raise ExportError(f"input {tensor.name!r} has shape {dims}: only the batch dimension may be dynamic")
        if dims[0] >= 0 and not min_batch == max_batch == dims[0]:
            raise ExportError(f"input {tensor.name!r} has a fixed batch of {dims[0]}; "
                              f"the batch range {min_batch}..{max_batch} needs a dynamic batch")
        rest = dims[1:]
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    return profile


def _has_qdq(onnx_path: Path) -> bool:
    model = onnx.load_model(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
