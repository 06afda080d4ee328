"""Progress for long stages: bars on a terminal, one log line per unit of work elsewhere.

`done` marks one finished unit of work (a stage, a trial, an epoch, an exported size)
in the run's journal (`journal.Journal`). When stderr is not a terminal (a CI log, a
`nohup` file, a pipe), bars would be silent for minutes, so each such unit is printed as
one plain line with the elapsed time and, where the total is known, an ETA."""
from __future__ import annotations

import time
from collections import defaultdict
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

    def __init__(self, enabled: bool = True, console: Console | None = None, journal: Journal | None = None,
                 started: float | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.journal = journal or Journal(None)
        self.enabled = enabled and self.console.is_terminal
        self.lines = enabled and not self.console.is_terminal  # plain progress lines instead of bars
        self._start = time.monotonic() if started is None else started  # a `time.monotonic()` reading
        self._first: dict[str, float] = {}
        self._count: defaultdict[str, int] = defaultdict(int)
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
        self.console.print(msg, soft_wrap=self.lines)

    def done(self, kind: str, key: Any = None, total: int | None = None, **info: Any) -> None:
        """One unit of `kind` finished (`total`: how many this stage has, for the ETA)."""
        now = time.monotonic()
        self._first.setdefault(kind, now)
        self._count[kind] += 1
        if self.lines:
            # soft_wrap: one unit, one line, however narrow the console thinks a log file is
            self.console.print(self._line(kind, key, total, now, info), markup=False, highlight=False, soft_wrap=True)
        self.journal.done(kind, key, **info)

    def _line(self, kind: str, key: Any, total: int | None, now: float, info: dict[str, Any]) -> str:
        line = f"[{_clock(now - self._start)}] {kind} {key if key is not None else ''}".rstrip()
        if total:
            n = self._count[kind]
            line += f" ({n}/{total})"
            if 1 < n < total:  # the rate of this process's units, so a resumed run's ETA is its own
                eta = (now - self._first[kind]) / (n - 1) * (total - n)
                line += f", ETA {_clock(eta)}"
        extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        return f"{line}: {extra}" if extra else line


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
