"""Pickle-free training checkpoints.

A checkpoint holds tensors and plain data only (state dicts, RNG states,
numbers, strings, lists, dicts) and is read with ``torch.load(weights_only=True)``,
which refuses arbitrary pickled objects: loading a run folder never executes
code from it. Rebuilding the network is the caller's job (from its arch).
Writes are atomic (`files.write_torch`): a kill at any moment leaves the
previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import first_line, write_torch

__all__ = ["load_checkpoint", "write_torch"]


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated by hand, or written by something else
        raise ConfigError(f"cannot read checkpoint {path}: {first_line(e)}; delete it to restart training "
                          f"from the last good state, or start a new run") from None
