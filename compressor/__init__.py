"""compressor: search, nested distillation, pruning, export and profiling of servable model sizes."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
