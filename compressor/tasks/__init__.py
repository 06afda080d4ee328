"""Tasks: what differs between image classification and causal language modelling (`base.Task`).

`task_for(config)` asks each task in turn whether it takes the teacher; image
classification takes whatever no other task claims.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Metric, Task
from .causal_lm import CausalLM
from .image import ImageClassification

if TYPE_CHECKING:
    from ..config import CompressConfig

__all__ = ["TASKS", "CausalLM", "ImageClassification", "Metric", "Task", "task_for"]

# asked in order: the specific claims first, the fallback last
TASKS: tuple[Task, ...] = (CausalLM(), ImageClassification())


def task_for(cfg: "CompressConfig") -> Task:
    return next(t for t in TASKS if t.claims(cfg))
