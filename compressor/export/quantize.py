"""INT8 post-training quantization with ONNX Runtime (static, QDQ, per-channel).

Choices, and why:

* **Static** (calibrated activation ranges) rather than dynamic: dynamic quantization
  only speeds up MatMul/Gemm-heavy models and leaves convolutions in fp32.
* **QDQ format**: the graph keeps fp32 ops wrapped in QuantizeLinear/DequantizeLinear
  pairs, which ONNX Runtime fuses into int8 kernels and TensorRT reads as explicit
  quantization; the QOperator format is ORT-only.
* **Types chosen for the CPU that runs the model** (`int8_settings_for`): S8S8 where
  int8 products accumulate in 32 bits (VNNI, ARM), U8U8 on x86 without VNNI, whose
  u8*s8 kernels saturate 16-bit pair sums (VPMADDUBSW): there, S8S8 flipped a
  quarter of a digits CNN's top-1 predictions (BENCHMARKS.md, "INT8"). The settings
  and the reason go into the file's metadata (`int8_*` keys): the file is tuned for
  that class.
* **Per-channel weights**: per-channel scales keep narrow pruned layers (a few
  channels with very different ranges) from losing most of their resolution to
  one shared scale.
* **First and last layer in fp32**: they cost the most top-1 agreement when
  quantized (raw inputs; logits whose near-ties decide the argmax) and little time.
* **MinMax calibration** on training samples: fast and deterministic; percentile
  and entropy calibration were measured and did not help the small models served here.
* `quant_pre_process` (shape inference + ORT graph optimisation) runs first because
  the quantizer needs inferred shapes and folded batch norms to quantize every conv;
  if it fails on some graph the raw model is quantized instead, not the run.

The INT8 file is written next to the fp32 one, never over it: the caller reports
its accuracy and latency beside the fp32 figures.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
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
from ..files import atomic_output, first_line
from ..hardware.isa import CPU_CLASSES, host_cpu_class
from .onnx_export import _merge_metadata

__all__ = ["Int8Settings", "TensorCalibrationReader", "int8_settings_for", "quantize_int8"]

log = logging.getLogger(__name__)


_QUANT_TYPES = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}
_CALIBRATION = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}
_SHORT = {"qint8": "S8", "quint8": "U8"}
_LABEL = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


@dataclass(frozen=True, kw_only=True)
class Int8Settings:
    """How a model is quantized, for which CPU class, and why: recorded in the INT8 file."""

    activation_type: str  # "qint8" | "quint8"
    weight_type: str  # "qint8" | "quint8"
    per_channel: bool
    reduce_range: bool  # 7-bit weights: keeps u8*s8 pair sums inside VPMADDUBSW's 16 bits
    calibration: str  # "minmax" | "percentile" | "entropy"
    fp32_first_last: bool  # keep the first and last Conv/Gemm/MatMul in fp32 (see `_name_end_layers`)
    cpu_class: str  # the `CPU_CLASSES` entry these settings were chosen for
    reason: str  # one sentence: why these settings suit that class

    def __post_init__(self) -> None:
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in _QUANT_TYPES:
                raise ValueError(f"{name} must be one of {sorted(_QUANT_TYPES)} but got {getattr(self, name)!r}.")
        if self.calibration not in _CALIBRATION:
            raise ValueError(f"calibration must be one of {sorted(_CALIBRATION)} but got {self.calibration!r}.")
        if self.cpu_class not in CPU_CLASSES:
            raise ValueError(f"cpu_class must be one of {CPU_CLASSES} but got {self.cpu_class!r}.")

    @property
    def label(self) -> str:
        """Short description, e.g. "U8U8 per-channel full-range weights MinMax first/last layer fp32"."""
        return " ".join([_SHORT[self.activation_type] + _SHORT[self.weight_type],
                         "per-channel" if self.per_channel else "per-tensor",
                         "7-bit weights" if self.reduce_range else "full-range weights",
                         _LABEL[self.calibration]]
                        + (["first/last layer fp32"] if self.fp32_first_last else []))

    def metadata(self) -> dict[str, str]:
        """The `int8_*` metadata_props keys that record these settings in the INT8 file."""
        return {"int8_cpu_class": self.cpu_class, "int8_activation_type": self.activation_type,
                "int8_weight_type": self.weight_type, "int8_per_channel": str(self.per_channel).lower(),
                "int8_reduce_range": str(self.reduce_range).lower(), "int8_calibration": self.calibration,
                "int8_fp32_first_last": str(self.fp32_first_last).lower(), "int8_reason": self.reason}


def int8_settings_for(cpu_class: str) -> Int8Settings:
    """The INT8 settings for a `CPU_CLASSES` entry (pure: it does not look at this machine).

    Two choices, measured on digits CNNs (BENCHMARKS.md, "INT8"):

    * **Types** follow the CPU's kernels: S8S8 (ORT's QDQ default, fastest) where
      int8 products accumulate in 32 bits; U8U8 where a u8*s8 kernel would saturate
      a 16-bit lane (x86 without VNNI) or where that is not known ("unknown"), since
      ORT computes u8*u8 by widening to 16 bits first, which cannot saturate. U8U8
      beat ORT's other documented fix, 7-bit weights (`reduce_range`), whose lost
      resolution cost more agreement than the saturation it avoids.
    * **First and last layer stay fp32** everywhere: the first layer sees raw 8-bit
      inputs (the largest products, and where saturation was found), and the last
      produces the logits whose near-ties decide top-1; quantizing either cost more
      agreement than all the other layers together, and both are cheap.
    """
    if cpu_class not in CPU_CLASSES:
        raise ValueError(f"cpu_class must be one of {CPU_CLASSES} but got {cpu_class!r}.")
    qtype = "qint8" if cpu_class in _UNSATURATED else "quint8"
    return Int8Settings(activation_type=qtype, weight_type=qtype, per_channel=True, reduce_range=False,
                        calibration="minmax", fp32_first_last=True, cpu_class=cpu_class,
                        reason={**_UNSATURATED, **_SATURATING}[cpu_class])


# Classes whose int8 kernels accumulate in 32 bits: full-range S8S8 loses nothing to saturation.
_UNSATURATED = {
    "x86-vnni": "VNNI (VPDPBUSD) accumulates int8 products in 32 bits, so full-range S8S8 cannot saturate; "
                "first and last layer stay fp32 for top-1 agreement.",
    "arm-dotprod": "ARM SDOT accumulates int8 products in 32 bits, so full-range S8S8 cannot saturate; "
                   "first and last layer stay fp32 for top-1 agreement.",
    "arm-neon": "ARM NEON int8 kernels widen products to 16 bits before adding them in 32, so full-range S8S8 "
                "cannot saturate; first and last layer stay fp32 for top-1 agreement.",
}
# Classes (or hosts not known to avoid it) where u8*s8 pair sums pass through a saturating 16-bit lane.
_SATURATING = {
    "x86-avx512": "AVX-512 without VNNI runs u8*s8 through VPMADDUBSW, which saturates at 16 bits, so U8U8 "
                  "(widened to 16 bits, no saturation) is used; first and last layer stay fp32 for top-1 agreement.",
    "x86-avx2": "AVX2 runs u8*s8 through VPMADDUBSW, which saturates at 16 bits, so U8U8 (widened to 16 bits, "
                "no saturation) is used; first and last layer stay fp32 for top-1 agreement.",
    "x86-other": "x86 without AVX2 runs u8*s8 through PMADDUBSW, which saturates at 16 bits, so U8U8 (widened "
                 "to 16 bits, no saturation) is used; first and last layer stay fp32 for top-1 agreement.",
    "unknown": "The CPU's int8 kernels are unknown, so U8U8 (saturation-free on every ONNX Runtime kernel) is "
               "used; first and last layer stay fp32 for top-1 agreement.",
}


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
                  settings: Int8Settings | None = None, max_samples: int = 512, batch_size: int = 32,
                  seed: int = 0) -> Path:
    """Write an INT8 (QDQ) copy of `onnx_path` at `out_path`, calibrated on `calib_x`.

    `settings` defaults to `int8_settings_for(host_cpu_class())`: the file is tuned
    for the CPU it is made on, so quantize on (a CPU of the same class as) the
    serving host, or pass the serving host's settings. `calib_x` should be training
    samples (up to `max_samples` are drawn). The fp32 file's `metadata_props` are
    carried over, with `precision=int8`, the number of calibration samples, the
    settings used and why (`int8_*` keys), and the layers kept fp32 (`int8_fp32_nodes`)
    added.
    """
    settings = settings if settings is not None else int8_settings_for(host_cpu_class())
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if onnx_path.resolve() == out_path.resolve():
        raise ExportError("quantize_int8 writes a new file; out_path must differ from onnx_path")
    fp32 = onnx.load_model(str(onnx_path), load_external_data=False)
    reader = TensorCalibrationReader(calib_x, fp32.graph.input[0].name, batch_size=batch_size,
                                     max_samples=max_samples, seed=seed)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=out_path.parent) as tmp:
        source = _preprocess(onnx_path, Path(tmp) / "pre.onnx")
        fp32_nodes: list[str] = []
        if settings.fp32_first_last:
            source, fp32_nodes = _name_end_layers(source, Path(tmp) / "named.onnx")
        quantized = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(source), str(quantized), reader, quant_format=QuantFormat.QDQ,
                nodes_to_exclude=fp32_nodes, per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                activation_type=_QUANT_TYPES[settings.activation_type],
                weight_type=_QUANT_TYPES[settings.weight_type],
                calibrate_method=_CALIBRATION[settings.calibration],
            )
        except Exception as e:  # noqa: BLE001 - ORT raises many types; all mean "not quantized"
            raise ExportError(f"INT8 quantization of {onnx_path.name} failed: {first_line(e)}") from None
        model = onnx.load_model(str(quantized))

    _drop_unused_opsets(model)
    # The fp32 parity figure does not describe this file; its accuracy is measured by the caller.
    props: dict[str, Any] = {p.key: p.value for p in fp32.metadata_props if p.key != "parity_max_abs_diff"}
    props.update(precision="int8", quantization=f"onnxruntime static QDQ {settings.label}",
                 calibration_samples=str(reader.samples), int8_fp32_nodes=",".join(fp32_nodes),
                 **settings.metadata())
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
                    src.name, first_line(e))
        return src


# Layers whose weights are quantized; the first and last of these are the ones kept fp32.
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _name_end_layers(src: Path, dst: Path) -> tuple[Path, list[str]]:
    """Names of the first and last weighted layers of `src` (ORT excludes nodes by name).

    Unnamed nodes are named first (written to `dst`), so every end layer can be
    excluded. "First" means no weighted layer before it on any path from an input,
    "last" no weighted layer after it on any path to an output, so a model with
    several stems or heads keeps all of them in fp32.
    """
    model = onnx.load_model(str(src))
    nodes = list(model.graph.node)
    if any(not n.name for n in nodes):
        taken = {n.name for n in nodes}
        for i, n in enumerate(nodes):
            if not n.name:
                n.name = next(c for c in (f"{n.op_type}_int8_{i}_{k}" for k in range(len(nodes) + 1))
                              if c not in taken)
                taken.add(n.name)
        onnx.save_model(model, str(dst))
        src = dst
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n)

    def reaches_weighted(start: onnx.NodeProto, upstream: bool) -> bool:
        seen: set[int] = set()  # by identity: ONNX does not require unique node names
        stack = [start]
        while stack:
            node = stack.pop()
            nxt = ([producer[t] for t in node.input if t in producer] if upstream
                   else [c for t in node.output for c in consumers.get(t, [])])
            for m in nxt:
                if m.op_type in _WEIGHTED_OPS:
                    return True
                if id(m) not in seen:
                    seen.add(id(m))
                    stack.append(m)
        return False

    weighted = [n for n in nodes if n.op_type in _WEIGHTED_OPS]
    ends = [n.name for n in weighted
            if not reaches_weighted(n, upstream=True) or not reaches_weighted(n, upstream=False)]
    return src, ends


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
