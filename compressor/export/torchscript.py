"""PyTorch-serving artefacts: a TorchScript trace and a `torch.export` program (`.pt2`).

Both are loadable without this package or the model's Python class:
`torch.jit.load(path)` for TorchScript (what TorchServe and libtorch C++ read) and
`torch.export.load(path).module()` for `.pt2` (what AOTInductor and ExecuTorch
start from). Each is reloaded and compared with the source model before it is
kept, so a trace that silently froze a data-dependent branch is caught here.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ExportError
from ..files import first_line, torch_bytes, write_bytes
from .onnx_export import _eval_mode, _leaves, _trace_input

__all__ = ["export_pt2", "export_torchscript"]

_ATOL = 1e-5  # same numerics, same kernels: only reduction order may differ


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """`torch.jit.trace` `model` on `example` and save it; the batch size stays free."""
    path = Path(path)
    x = example.detach()
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings are checked by the comparison below
        try:
            traced = torch.jit.trace(model, (_trace_input(x),), check_trace=False)
        except Exception as e:  # noqa: BLE001 - tracing fails in many ways
            raise ExportError(f"TorchScript trace failed: {type(e).__name__}: {first_line(e)}") from None
        write_bytes(path, torch_bytes(torch.jit.save, traced))
        _compare(model, torch.jit.load(str(path)), x, path)
    return path


def export_pt2(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """`torch.export` `model` with a dynamic batch dimension and save it as `.pt2`."""
    path = Path(path)
    x = example.detach()
    with _eval_mode(model), torch.no_grad():
        try:
            program = torch.export.export(model, (_trace_input(x),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as e:  # noqa: BLE001 - export fails in many ways
            raise ExportError(f"torch.export failed: {type(e).__name__}: {first_line(e)}") from None
        write_bytes(path, torch_bytes(torch.export.save, program))
        _compare(model, torch.export.load(str(path)).module(), x, path)
    return path


def _compare(model: nn.Module, loaded: nn.Module, x: torch.Tensor, path: Path) -> None:
    for batch in (x, x[:1]):
        expected, got = _leaves(model(batch)), _leaves(loaded(batch))
        if len(expected) != len(got) or any(
            e.shape != g.shape or not torch.allclose(e, g, atol=_ATOL, rtol=0) for e, g in zip(expected, got)
        ):
            path.unlink(missing_ok=True)
            raise ExportError(f"{path.name}: reloaded model differs from PyTorch at batch {len(batch)}")
