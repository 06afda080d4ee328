"""A minimal ONNX export for timing candidates during predictor calibration.

The pipeline's own exporter (`compressor.export`) adds parity checks, external
data and quantisation; calibration only needs a graph ONNX Runtime will run the
way it runs the final artefacts. We use the same exporters in the same order
(TorchScript first, about ten times faster per model; torch.export based dynamo
where it fails) so calibration and final measurement see the same kind of graph;
both fold batch norm into the convolutions. `hardware` sits below the stages,
so it does not import `compressor.export`.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import ExportError

__all__ = ["export_for_timing"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs warnings (missing torchvision ops, deprecations) that are
    not the user's concern while we time a candidate."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_for_timing(module: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """Export `module` (eval mode) to `path` with a dynamic batch dimension."""
    path = Path(path)
    module = module.eval()
    # an example batch of 2, not 1: torch.export specialises size-1 dimensions
    x = torch.randn((2, *input_shape))
    errors = []
    for dynamo in (False, True):
        try:
            with _quiet(), torch.no_grad():
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["output"],
                                      dynamic_shapes=({0: batch},), external_data=False, verbose=False)
                else:
                    torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["input"],
                                      output_names=["output"], dynamic_axes={"input": {0: "batch"},
                                                                             "output": {0: "batch"}})
            return path
        except Exception as e:  # the exporters raise many types; all mean "cannot time this candidate"
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise ExportError(f"cannot export {type(module).__name__} to ONNX for timing: {'; '.join(errors)}")
