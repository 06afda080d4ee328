"""Intake: what the run starts from, checked before anything is trained.

- `teacher`: load a teacher safely (TorchScript, ``.pt2``, state_dict + factory, trusted
  pickle), converting opaque formats to an exported graph;
- `lift`: that exported graph made into real layers, so Torch-Pruning can cut it;
- `data`: built-in and user datasets with deterministic splits.
"""
from .data import load_data
from .teacher import load_teacher

__all__ = ["load_data", "load_teacher"]
