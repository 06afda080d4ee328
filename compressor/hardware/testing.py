"""Helpers for tests of code that measures latency (as `optuna.testing` is for Optuna).

`FixedTimingsBackend` stands in for a runtime and returns set durations through
the real timing policy, so budget logic is tested without timing noise;
`tiny_onnx` writes a small valid model in milliseconds without the exporter.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from ..types import HardwareProfile, LatencyReport
from .timing import measure_timed_run

__all__ = ["FixedTimingsBackend", "tiny_onnx"]


class FixedTimingsBackend:
    """A backend whose runs take `times_ms`, cycled, whatever the artefact."""

    name = "fixed-timings"

    def __init__(self, times_ms: Sequence[float]) -> None:
        if not times_ms:
            raise ValueError("times_ms must not be empty.")
        self.times_ms = tuple(float(t) for t in times_ms)
        self.calls = 0

    def unavailable_reason(self) -> str | None:
        return None

    def measure(self, artifact: str | Path | nn.Module, profile: HardwareProfile, input_shape: Sequence[int],
                progress: bool = False) -> LatencyReport:
        self.calls += 1
        times = itertools.cycle(self.times_ms)
        return measure_timed_run(lambda: next(times) / 1e3, profile,
                                 {"backend": self.name, "input_shape": list(input_shape)})


def tiny_onnx(path: str | Path, channels: int = 4, size: int = 8, batch: int | str = "batch",
              seed: int = 0) -> Path:
    """A Conv(3x3) -> Relu -> GlobalAveragePool model with input (batch, 1, size, size).

    `batch` is a symbolic name (dynamic) or a fixed integer.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(channels, np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["output"])]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, channels, 1, 1])
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
