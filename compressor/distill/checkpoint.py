"""Pickle-free training checkpoints.

A checkpoint holds tensors and plain data only (state dicts, RNG states,
numbers, strings, lists, dicts) and is read with ``torch.load(weights_only=True)``,
which refuses arbitrary pickled objects: loading a run folder never executes
code from it. Rebuilding the network is the caller's job (from its arch).
Writes are atomic (`files.write_torch`): a kill at any moment leaves the
previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import first_line, write_torch, zip_bomb

__all__ = ["load_checkpoint", "write_torch"]


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        damaged = _damaged(Path(path))
        if damaged:
            raise ConfigError(f"cannot read checkpoint {path}: {damaged}; delete it to restart training "
                              f"from the first epoch, or start a new run")
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ConfigError(f"cannot read checkpoint {path}: {first_line(e)}; delete it to restart training "
                              f"from the first epoch, or start a new run") from None
        # torch's message goes on to explain how to load it anyway: never the advice for a run folder
        raise ConfigError(f"checkpoint {path} holds pickled Python objects, not only tensors (loading it could "
                          f"run code), so it was not loaded; this package never writes such a file: delete it "
                          f"to restart training, or start a new run") from None
    except Exception as e:  # noqa: BLE001 - truncated by hand, or written by something else
        raise ConfigError(f"cannot read checkpoint {path}: {first_line(e)}; delete it to restart training "
                          f"from the first epoch, or start a new run") from None


def _damaged(path: Path) -> str | None:
    """Why the archive at `path` cannot be trusted, or None. `torch.load` does not check the zip's
    CRC-32s, so bytes garbled inside a tensor would load as silently wrong weights: every member's
    checksum is verified first (streamed; a file that is not a zip is left to torch.load)."""
    why = zip_bomb(path)
    if why:
        return why
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # noqa: BLE001 - a zip without its directory at the end was cut short
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        return "the zip archive is truncated (its directory at the end is missing)" if zipped else None
    try:
        with archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:  # a damaged member
        return f"damaged archive ({first_line(e)})"
    # members are named <archive>/data/<n>: the part after the archive's name says which record
    return f"its record {bad.split('/', 1)[-1]} fails its CRC-32 check (the file is garbled)" if bad else None
