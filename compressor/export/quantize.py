"""INT8 post-training quantization with ONNX Runtime (static, QDQ, per-channel).

Choices, and why:

* **Static** (calibrated activation ranges) rather than dynamic: dynamic quantization
  only speeds up MatMul/Gemm-heavy models and leaves convolutions in fp32.
* **QDQ format**: the graph keeps fp32 ops wrapped in QuantizeLinear/DequantizeLinear
  pairs, which ONNX Runtime fuses into int8 kernels and TensorRT reads as explicit
  quantization; the QOperator format is ORT-only.
* **S8S8, per-channel weights**: ORT's recommended default for QDQ on x86/ARM;
  per-channel scales keep narrow pruned layers (a few channels with very different
  ranges) from losing most of their resolution to one shared scale.
* **MinMax calibration** on training samples: fast and deterministic; percentile
  or entropy calibration cost far more memory for the small models served here.
* `quant_pre_process` (shape inference + ORT graph optimisation) runs first because
  the quantizer needs inferred shapes and folded batch norms to quantize every conv;
  if it fails on some graph the raw model is quantized instead, not the run.

The INT8 file is written next to the fp32 one, never over it: the caller reports
its accuracy and latency beside the fp32 figures.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import ExportError
from ._io import atomic_output
from .onnx_export import _first_line, _merge_metadata

__all__ = ["TensorCalibrationReader", "quantize_int8"]

log = logging.getLogger(__name__)


class TensorCalibrationReader(CalibrationDataReader):
    """Feeds a tensor of samples to the calibrator in fixed-size batches.

    Samples are drawn by a seeded permutation, so calibration is reproducible and
    does not see only the first classes of a class-sorted dataset.
    """

    def __init__(self, x: torch.Tensor, input_name: str, *, batch_size: int = 32,
                 max_samples: int = 512, seed: int = 0) -> None:
        if len(x) == 0:
            raise ExportError("INT8 calibration needs at least one sample")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 but got {batch_size}.")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:max_samples]
        data = x.detach().cpu()[idx]
        self.samples = len(data)
        self._batches = [np.ascontiguousarray(data[i:i + batch_size].float().numpy())
                         for i in range(0, len(data), batch_size)]
        self._name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._batches):
            return None
        self._pos += 1
        return {self._name: self._batches[self._pos - 1]}

    def rewind(self) -> None:
        self._pos = 0


def quantize_int8(onnx_path: str | Path, calib_x: torch.Tensor, out_path: str | Path, *,
                  per_channel: bool = True, max_samples: int = 512, batch_size: int = 32,
                  seed: int = 0) -> Path:
    """Write an INT8 (QDQ) copy of `onnx_path` at `out_path`, calibrated on `calib_x`.

    `calib_x` should be training samples (up to `max_samples` are drawn). The fp32
    file's `metadata_props` are carried over, with `precision=int8` and the number of
    calibration samples added.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if onnx_path.resolve() == out_path.resolve():
        raise ExportError("quantize_int8 writes a new file; out_path must differ from onnx_path")
    fp32 = onnx.load_model(str(onnx_path), load_external_data=False)
    reader = TensorCalibrationReader(calib_x, fp32.graph.input[0].name, batch_size=batch_size,
                                     max_samples=max_samples, seed=seed)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=out_path.parent) as tmp:
        source = _preprocess(onnx_path, Path(tmp) / "pre.onnx")
        quantized = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(source), str(quantized), reader, quant_format=QuantFormat.QDQ,
                per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as e:  # noqa: BLE001 - ORT raises many types; all mean "not quantized"
            raise ExportError(f"INT8 quantization of {onnx_path.name} failed: {_first_line(e)}") from None
        model = onnx.load_model(str(quantized))

    _drop_unused_opsets(model)
    # The fp32 parity figure does not describe this file; its accuracy is measured by the caller.
    props: dict[str, Any] = {p.key: p.value for p in fp32.metadata_props if p.key != "parity_max_abs_diff"}
    props.update(precision="int8", quantization="onnxruntime static QDQ S8S8 "
                 + ("per-channel" if per_channel else "per-tensor") + " MinMax",
                 calibration_samples=str(reader.samples))
    del model.metadata_props[:]  # drop the pre-processor's bookkeeping keys too
    _merge_metadata(model, props)
    with atomic_output(out_path) as tmp_out:
        onnx.save_model(model, str(tmp_out))
    return out_path


def _preprocess(src: Path, dst: Path) -> Path:
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception as e:  # noqa: BLE001 - pre-processing is an aid; quantize the raw model
        log.warning("quant_pre_process failed on %s (%s); quantizing the model as exported",
                    src.name, _first_line(e))
        return src


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    """ORT's optimiser declares a dozen domains (training, nchwc, ...) the graph never uses.

    Left in, they make strict consumers (TensorRT's parser, older runtimes) refuse a
    model that needs none of them.
    """
    used = _domains(model.graph)
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _domains(graph: onnx.GraphProto) -> set[str]:
    """Operator domains used by `graph`, including subgraphs of If/Loop/Scan nodes."""
    found: set[str] = set()
    for node in graph.node:
        found.add(node.domain or "")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= _domains(sub)
    return found
