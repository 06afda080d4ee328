"""The run folder's `manifest.json`: what was produced, with every figure.

The manifest is written LAST and atomically (temp file + rename), so a folder
with a manifest is a complete run and a failed run never looks complete. It is
also the restore record: a model is rebuilt from arch + weights, never a pickle.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .types import to_jsonable

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(data), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(run_dir: Path, manifest: Mapping[str, Any]) -> Path:
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    path = Path(run_dir) / MANIFEST_NAME
    write_json_atomic(path, data)
    return path


def read_manifest(run_dir_or_file: Path) -> dict[str, Any]:
    p = Path(run_dir_or_file)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ConfigError(f"no manifest at {p} (is this a finished run folder?)")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"manifest {p} is unreadable: {e}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"manifest {p} has schema_version {data.get('schema_version')!r}; "
            f"this version reads {SCHEMA_VERSION}"
        )
    return data
