"""Deployment artefacts for each servable size.

ONNX (single file, dynamic batch, parity-checked, metadata), INT8 ONNX (ORT static
QDQ), TensorRT engines (where TensorRT and a GPU exist), TorchScript / `.pt2`
files for PyTorch serving, and on request edge formats (`formats`: ORT Mobile `.ort`,
OpenVINO IR, ExecuTorch `.pte`), each parity-checked and timed where it runs. Every writer is atomic: a file either appears complete
or not at all.
"""
from ..files import sha256_file
from ..hardware.tensorrt import (
    TRT_UNAVAILABLE,
    build_tensorrt_engine,
    tensorrt_available,
)
from .formats import (
    FORMATS,
    FormatExport,
    FormatParity,
    export_formats,
    format_timing_profile,
)
from .onnx_export import (
    DEFAULT_OPSET,
    OnnxExport,
    export_onnx,
    onnx_metadata,
    onnx_predict,
    read_onnx_metadata,
    set_onnx_metadata,
)
from .quantize import (
    Int8Settings,
    TensorCalibrationReader,
    int8_settings_for,
    quantize_int8,
)
from .torchscript import export_pt2, export_torchscript

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "FormatExport",
    "FormatParity",
    "Int8Settings",
    "TRT_UNAVAILABLE",
    "OnnxExport",
    "TensorCalibrationReader",
    "build_tensorrt_engine",
    "export_formats",
    "export_onnx",
    "export_pt2",
    "export_torchscript",
    "format_timing_profile",
    "int8_settings_for",
    "onnx_metadata",
    "onnx_predict",
    "quantize_int8",
    "read_onnx_metadata",
    "set_onnx_metadata",
    "sha256_file",
    "tensorrt_available",
]
