"""Atomic, pickle-free training checkpoints.

A checkpoint holds tensors and plain data only (state dicts, RNG states,
numbers, strings, lists, dicts) and is read with ``torch.load(weights_only=True)``,
which refuses arbitrary pickled objects: loading a run folder never executes
code from it. Rebuilding the network is the caller's job (from its arch).

Writes go to a temporary file in the same folder, are fsync'd, then renamed
over the old file (`os.replace` is atomic on POSIX), so a kill -9 at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["save_atomic", "load_checkpoint"]


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated by hand, or written by something else
        raise ConfigError(f"cannot read checkpoint {path}: {e}") from None
