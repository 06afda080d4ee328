"""The ground floor for files: atomic writes, hashing, one-line error text.

Every file the run folder holds is written here: to a temporary file in the
destination folder, flushed to disk, then renamed over the target (`os.replace`
is atomic on one POSIX filesystem). A kill at any moment leaves the previous file
or the new one, never half of one, so a later `--resume` or a serving process
never reads a truncated file as complete.

Standard library only (torch is imported lazily by `write_torch`), so readers
such as the report and `pick` never pull in torch through this module.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .faults import crash_point

__all__ = ["atomic_output", "first_line", "sha256_file", "write_bytes", "write_json", "write_text",
           "write_torch", "torch_bytes", "json_safe", "zip_bomb"]

_CHUNK = 1 << 20  # 1 MiB reads: hashing speed is flat above this, memory stays small
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour/bold codes inside exception text
# torch archives store their members uncompressed and .npz files deflate real data a few times
# at most, so a zip whose members claim more than this many times its size (and more than the
# floor) is a zip bomb, or corrupt: refused from its directory, before any member is read.
_MAX_EXPANSION = 100
_EXPANSION_FLOOR = 64 << 20
# Below this much free space, a failed write is taken for a full disk (`disk_full_error`).
_NEARLY_FULL = 1 << 20


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is synced and renamed onto `path`.

    For writers that want a file name rather than a file object (onnx.save, torch.export.save).
    On error the temporary file is removed and any previous `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name keeps `path`'s ending: some writers (torch.export.save) check the extension.
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run folders are meant to be shared and served
        crash_point(f"write:{path.name}")  # the fault suite's kill between a whole file and its rename
        os.replace(tmp, path)
    except Exception as e:
        full = disk_full_error(e, path)
        if full is not None:
            raise full from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def disk_full_error(e: BaseException, path: Path) -> Exception | None:
    """One clear error for a write that failed because the disk (or quota) is full, else None.

    Writers report a full disk in their own ways: Python's OSError(ENOSPC), torch's
    "file write failed" RuntimeError, ONNX's protobuf error; so a failed write is also
    taken for a full disk when its folder has (next to) no space left."""
    from .errors import OutputError

    errno_full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    try:
        nearly_full = shutil.disk_usage(path.parent).free < _NEARLY_FULL
    except OSError:
        nearly_full = False
    if not (errno_full or nearly_full):
        return None
    return OutputError(f"cannot write {path}: no space left on the output disk; nothing written so far is "
                       f"lost: free some space, then rerun with --resume")


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """JSON with a trailing newline; inf/NaN become null (JSON has no infinity)."""
    return write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def write_torch(path: str | Path, obj: Any) -> Path:
    """`torch.save` of tensors and plain data (read back with ``weights_only=True``)."""
    import torch

    return write_bytes(path, torch_bytes(torch.save, obj))


def torch_bytes(save: Any, obj: Any) -> bytes:
    """What `save(obj, file)` (torch.save, torch.jit.save, torch.export.save) writes, as bytes.

    torch's archive writer aborts the whole process when the disk fills under it (a C++
    exception thrown from a destructor): serialized in memory first, the bytes then go to
    disk through Python, where a full disk is an ordinary OSError (`disk_full_error`)."""
    buffer = io.BytesIO()
    save(obj, buffer)
    return buffer.getvalue()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (streamed, so large engines are fine)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def zip_bomb(path: str | Path) -> str | None:
    """Why the zip at `path` must not be opened (its members claim to expand to far more than
    the file holds), or None: a sane zip, or no zip at all. Reads only the zip's directory."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            claimed = sum(max(0, i.file_size) for i in z.infolist())
    except Exception:  # noqa: BLE001 - not a readable zip: the caller's own reader says what it is
        return None
    packed = os.path.getsize(path)
    if claimed > max(_MAX_EXPANSION * packed, _EXPANSION_FLOOR):
        return (f"its zip members claim to expand to {claimed / 2**20:,.0f} MiB from {packed / 2**20:,.2f} MiB "
                f"on disk (a zip bomb, or a corrupt archive); refused without expanding it")
    return None


def first_line(e: BaseException) -> str:
    """An exception as one line: its first non-empty line, else its type name."""
    text = _ANSI.sub("", str(e)).strip()  # torch decorates some messages with terminal bold
    return text.splitlines()[0].strip()[:300] if text else type(e).__name__


def json_safe(obj: Any) -> Any:
    """`obj` with inf/NaN as None and tuples as lists: what JSON can hold."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
