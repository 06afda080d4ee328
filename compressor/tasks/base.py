"""What differs between tasks, owned in one place per task.

A task decides: which teachers it takes (`claims`), how its data is loaded, the example
inputs that exports and latency timing use, its metrics and which one is the headline
(stored as every size's `accuracy`, the figure `pick` ranks on), the distillation target
(class logits, next-token logits), and what a server must do to a raw input
(`serving`, recorded in the manifest and in each ONNX file's metadata). `compress` asks
`task_for(config)` which task a run is and hands it the run; nothing downstream compares
task names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import CompressConfig
    from ..pipeline import RunResult
    from ..ranks import Ranks

__all__ = ["Metric", "Task"]


@dataclass(frozen=True)
class Metric:
    """One figure a task reports per size."""

    key: str
    label: str
    higher_is_better: bool = True
    percent: bool = True  # shown as a percentage (else as a plain number)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "higher_is_better": self.higher_is_better,
                "percent": self.percent, "description": self.description}


class Task(ABC):
    """The contract every task fulfils (image classification, causal language modelling)."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    headline: ClassVar[str]  # key of the metric stored as `accuracy` (must be higher-is-better)
    distillation_target: ClassVar[str]  # what the student matches, for the record

    @abstractmethod
    def claims(self, cfg: "CompressConfig") -> bool:
        """True when this task handles `cfg.teacher` (the registry asks in order)."""

    @abstractmethod
    def load_data(self, cfg: "CompressConfig", teacher: Any = None) -> Any:
        """The task's data, split deterministically for `cfg.seed`."""

    @abstractmethod
    def example_inputs(self, data: Any, n: int) -> torch.Tensor:
        """`n` real inputs for tracing, export parity and timing."""

    @abstractmethod
    def timing_shape(self, data: Any) -> tuple[int, ...]:
        """One sample's input shape, as the latency backends time it (batch from the profile)."""

    @abstractmethod
    def distillation_loss(self, student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
        """tau^2 * KL(target || student) on this task's outputs."""

    @abstractmethod
    def serving(self, data: Any) -> dict[str, Any]:
        """What a server applies to a raw input, recorded in the manifest and ONNX metadata."""

    @abstractmethod
    def compress(self, cfg: "CompressConfig", console: "Console", held: ExitStack,
                 ranks: "Ranks | None" = None) -> "RunResult":
        """The whole run for this task."""

    def record(self) -> dict[str, Any]:
        """The manifest's `task` block: the reports read metric labels from here."""
        return {"name": self.name, "headline": self.headline, "distillation_target": self.distillation_target,
                "metrics": [m.to_dict() for m in self.metrics]}

    def headline_of(self, metrics: Mapping[str, float | None]) -> float:
        value = metrics.get(self.headline)
        return float("nan") if value is None else float(value)
