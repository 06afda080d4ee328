"""The run's work journal: one line per finished unit of work, appended to `events.jsonl`.

Each line is a JSON object ``{"t": <unix time>, "pid": ..., "kind": ..., "key": ..., ...}``
written after the unit's result is on disk: a search trial stored, an epoch's
checkpoint renamed into place, a size exported and measured. A resumed run appends
to the same file, so the journal shows what each process did; a unit listed twice
is finished work that was redone. Lines are appended with one `write` each (O_APPEND),
so a kill leaves at most a last line without its newline, which readers skip.

Passing a unit is also a crash point (`faults.crash_point(kind)`), so the fault
suite can kill a run right after any unit of work.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError
from .faults import crash_point
from .files import disk_full_error

EVENTS_NAME = "events.jsonl"


class Journal:
    def __init__(self, run_dir: Path | None) -> None:
        self.path = Path(run_dir) / EVENTS_NAME if run_dir is not None else None

    def done(self, kind: str, key: Any = None, **info: Any) -> None:
        """Record that one unit of `kind` finished, then pass its crash point."""
        if self.path is not None:
            line = json.dumps({"t": round(time.time(), 3), "pid": os.getpid(), "kind": kind, "key": key, **info},
                              default=str)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
            except OSError as e:
                raise disk_full_error(e, self.path) or OutputError(
                    f"cannot write {self.path}: {e.strerror or e}") from None
        crash_point(kind)


def read_events(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The journal's complete lines, oldest first (a torn last line is skipped)."""
    path = Path(run_dir) / EVENTS_NAME
    if not path.is_file():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event
