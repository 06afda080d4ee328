"""Image (and array) classification: one input in, class logits out.

The stages of `compressor.pipeline` (search, nested distillation, Torch-Pruning, export) are
this task's run; this module is where they get the task's data, example inputs, metric and
serving record from.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch

from ..types import DataSplits
from .base import Metric, Task

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import CompressConfig
    from ..pipeline import RunResult
    from ..ranks import Ranks

__all__ = ["ImageClassification"]


class ImageClassification(Task):
    name = "image-classification"
    metrics = (Metric("accuracy", "Accuracy", description="top-1 accuracy on the validation split"),)
    headline = "accuracy"
    distillation_target = "class logits (softened by the temperature)"

    def claims(self, cfg: "CompressConfig") -> bool:
        return True  # the fallback: every teacher another task does not claim is a classifier

    def load_data(self, cfg: "CompressConfig", teacher: Any = None) -> DataSplits:
        from ..intake import load_data

        return load_data(cfg.data, seed=cfg.seed, image_size=cfg.image_size)

    def example_inputs(self, data: DataSplits, n: int) -> torch.Tensor:
        return data.x_val[:n]

    def timing_shape(self, data: DataSplits) -> tuple[int, ...]:
        return tuple(data.input_shape)

    def distillation_loss(self, student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
        from ..distill.losses import kd_kl

        return kd_kl(student, target, temperature)

    def serving(self, data: DataSplits) -> dict[str, Any]:
        """The preprocessing (image decoding, resize, scale, the normalisation's mean and std) and
        the class names: with them a server turns a raw sample into what the model was trained on."""
        return {"preprocess": dict(data.preprocess),
                "classes": list(data.class_names) or [str(i) for i in range(data.num_classes)]}

    def compress(self, cfg: "CompressConfig", console: "Console", held: ExitStack,
                 ranks: "Ranks | None" = None) -> "RunResult":
        from ..pipeline import run_classification

        return run_classification(self, cfg, console, held, ranks)
