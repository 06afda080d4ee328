"""Progress bars for long stages (rich), silent when output is not a terminal or disabled.

`done` marks one finished unit of work (a trial, an epoch, an exported size) in the
run's journal (`journal.Journal`), whether or not bars are shown."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichProgress

from .journal import Journal


class Progress:
    """A thin wrapper so stages do not care whether bars are shown."""

    def __init__(self, enabled: bool = True, console: Console | None = None, journal: Journal | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.journal = journal or Journal(None)
        self.enabled = enabled and self.console.is_terminal
        self._p = _RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                transient=False, disable=not self.enabled)

    def __enter__(self) -> "Progress":
        self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._p.__exit__(*exc)

    def add(self, description: str, total: int | None) -> int:
        return self._p.add_task(description, total=total)

    def advance(self, task: int, n: int = 1) -> None:
        self._p.advance(task, n)

    def update(self, task: int, **kw: Any) -> None:
        self._p.update(task, **kw)

    def log(self, msg: str) -> None:
        self.console.print(msg)

    def done(self, kind: str, key: Any = None, **info: Any) -> None:
        self.journal.done(kind, key, **info)
