"""File helpers shared by every exporter: hashing and all-or-nothing writes.

Artefacts are written to a temporary file in the destination folder and renamed
into place, so an interrupted export never leaves a truncated model that a
later `--resume` or a serving process would take for a finished one.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 20  # 1 MiB reads: hashing speed is flat above this, memory stays small


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (streamed, so large engines are fine)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success.

    The temporary file lives in the same folder so the final `os.replace` is an
    atomic rename on one filesystem. On error the temporary file is removed and
    any previous `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name keeps `path`'s ending: some writers (torch.export.save) check the extension.
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artefacts are meant to be served
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
