"""The `compress profile` and `compress profiles` commands (wired into `compressor.cli`).

Both return an exit code and let `CompressorError`s propagate: the main CLI
prints those in one line.
"""
from __future__ import annotations

import sys
from typing import Sequence

from rich.console import Console

from ..budget import parse_budget
from ..errors import BackendUnavailableError, ConfigError
from .backends import model_input_shape
from .display import profiles_table, report_table
from .measure import measure_onnx, unavailable_reason
from .profiles import list_profiles, load_profile

__all__ = ["cmd_profile", "cmd_profiles"]


def _console() -> Console:
    """stdout; when piped, 100 columns rather than rich's 80 so tables do not wrap."""
    console = Console()
    return console if console.is_terminal else Console(width=100)


def cmd_profile(onnx_path: str, profile: str, input_shape: Sequence[int] | None = None,
                budget: str | None = None, console: Console | None = None) -> int:
    """Measure `onnx_path` on `profile` and print a short table.

    `onnx_path` is an ONNX file (any CPU profile), an ONNX Runtime `.ort` file
    (onnxruntime-cpu profiles) or an OpenVINO IR `.xml` (openvino-cpu profiles). The
    per-sample input shape is read from the file unless given. A
    predicted-only profile needs the PyTorch model to predict from, so this
    command (which has only the ONNX file) refuses it with the reason.
    """
    console = console or _console()
    prof = load_profile(profile)
    reason = unavailable_reason(prof)
    if reason:
        raise BackendUnavailableError(f"cannot measure on this machine: {reason}")
    if budget and parse_budget(budget).relative:
        raise ConfigError(f"budget {budget} is relative to a teacher; `compress profile` needs an absolute one")
    shape = tuple(input_shape) if input_shape else model_input_shape(onnx_path)
    judged = parse_budget(budget).resolve(prof.name, prof.stat) if budget else None
    report = measure_onnx(onnx_path, prof, shape, progress=sys.stderr.isatty())
    console.print(report_table(report, title=f"{onnx_path} on {prof.name} (input {shape}, measured)",
                               budget=judged))
    return 0


def cmd_profiles(console: Console | None = None) -> int:
    """List the hardware profiles: name, backend, measured/predicted, threads, batch, stat, round_to."""
    console = console or _console()
    console.print(profiles_table(list_profiles()))
    return 0
