"""An OpenVINO IR (`model.xml` graph + `model.bin` weights), converted from the ONNX file.

Converted from the parity-checked ONNX file rather than traced again from PyTorch, so
the IR is the graph that was already checked. Weights are kept fp32
(`compress_to_fp16=False`): OpenVINO's default halves them on save, which would change
the numbers of an fp32 model. It is loaded back and timed by the `openvino-cpu`
backend (`hardware.backends.OpenVinoCpuBackend`), the same code that times
`--profile openvino-cpu`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from ..files import write_bytes
from ..hardware.backends import OpenVinoCpuBackend
from ..types import HardwareProfile
from .formats import DEFAULT_ATOL, FormatExport, Run, checked
from .onnx_export import Reference

__all__ = ["convert_to_openvino", "export_openvino"]


def convert_to_openvino(onnx_path: str | Path, xml_path: str | Path) -> tuple[Path, Path]:
    """Write `xml_path` and its weights (`.bin` beside it) from `onnx_path`; returns both paths."""
    import openvino as ov

    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    model = ov.convert_model(str(onnx_path))
    with tempfile.TemporaryDirectory(prefix="compressor-ov-") as tmp:
        ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        # weights first: a graph file in place never points at weights that are not
        write_bytes(bin_path, (Path(tmp) / "model.bin").read_bytes())
        write_bytes(xml_path, (Path(tmp) / "model.xml").read_bytes())
    return xml_path, bin_path


def export_openvino(*, onnx_path: Path, module: nn.Module, reference: Reference, profile: HardwareProfile,
                    input_shape: Sequence[int], atol: float = DEFAULT_ATOL) -> FormatExport:
    """`model.xml` + `model.bin` beside `onnx_path`, loaded back by OpenVINO's CPU plugin, judged
    against PyTorch and timed under `profile`'s settings."""
    backend = OpenVinoCpuBackend()
    reason = backend.unavailable_reason()
    if reason:
        return FormatExport("openvino", reason=reason)
    import openvino as ov

    xml, weights = convert_to_openvino(onnx_path, Path(onnx_path).with_suffix(".xml"))

    def load() -> Run:
        compiled = backend.compile(xml)  # the file's own shapes: a dynamic batch runs the whole batch
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> list[np.ndarray]:
            result = request.infer({0: np.ascontiguousarray(x)})
            return [np.asarray(result[o]) for o in compiled.outputs]

        return run

    runtime = f"OpenVINO {ov.__version__.split('-')[0]} CPU"  # the release, without the build hash
    return checked("openvino", {"openvino": xml, "openvino_weights": weights}, runtime, reference, load,
                   lambda: backend.measure(xml, profile, input_shape), atol=atol)
