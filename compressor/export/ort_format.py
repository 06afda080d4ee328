"""ONNX Runtime's `.ort` format (what ORT Mobile and minimal ORT builds load), from the ONNX file.

Converted with ONNX Runtime's own tool (`onnxruntime.tools.convert_onnx_models_to_ort`)
in its default, portable form: the graph is optimised once at conversion ("fixed"
style, level "all") without the x86-only NCHWc layout transform, so the file runs on
the ARM phones and boards ORT Mobile targets as well as here. The tool also lists the
operators the model needs (`model.required_operators.config`), the input of a
reduced ORT build (`--include_ops_by_config`); it is kept beside the `.ort` file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
from torch import nn

from ..errors import ExportError
from ..files import write_bytes, write_text
from ..hardware.backends import OrtCpuBackend
from ..types import HardwareProfile
from .formats import DEFAULT_ATOL, FormatExport, Run, checked
from .onnx_export import Reference, _session

__all__ = ["convert_to_ort", "export_ort"]


def convert_to_ort(onnx_path: str | Path, ort_path: str | Path) -> tuple[Path, Path]:
    """Write `ort_path` (and its operator list beside it) from `onnx_path`; returns both paths."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    onnx_path, ort_path = Path(onnx_path), Path(ort_path)
    config_path = ort_path.with_name(f"{ort_path.stem}.required_operators.config")
    # the tool converts every .onnx file in a folder and writes beside it: give it a copy in a folder of its own
    with tempfile.TemporaryDirectory(prefix="compressor-ort-") as tmp:
        src, out = Path(tmp) / "model.onnx", Path(tmp) / "out"
        shutil.copyfile(onnx_path, src)
        with _quiet_tool():
            convert_onnx_models_to_ort(src, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        made, ops = out / "model.ort", out / "model.required_operators.config"
        if not made.is_file():
            raise ExportError(f"the ORT converter wrote no .ort file for {onnx_path.name}")
        write_bytes(ort_path, made.read_bytes())
        # the list's header names the file it was made from: name the one that ships
        write_text(config_path, ops.read_text().replace(str(made), ort_path.name) if ops.is_file() else "")
    return ort_path, config_path


@contextlib.contextmanager
def _quiet_tool() -> Any:
    """The tool prints a line per step and logs each config file at INFO on its own handler."""
    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def export_ort(*, onnx_path: Path, module: nn.Module, reference: Reference, profile: HardwareProfile,
               input_shape: Sequence[int], atol: float = DEFAULT_ATOL) -> FormatExport:
    """`model.ort` beside `onnx_path`, loaded back by ONNX Runtime, judged against PyTorch and
    timed with ONNX Runtime's CPU provider under `profile`'s settings (as the ONNX file is)."""
    ort_path, ops = convert_to_ort(onnx_path, Path(onnx_path).with_suffix(".ort"))

    def load() -> Run:
        session = _session(str(ort_path), threads=None)
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.ascontiguousarray(x)})

    return checked("ort", {"ort": ort_path, "ort_operators": ops}, f"ONNX Runtime {ort.__version__}", reference,
                   load, lambda: OrtCpuBackend().measure(ort_path, profile, input_shape), atol=atol)
