"""Stand-ins the tests hand to code under test in place of the real thing."""
from __future__ import annotations


class StopAt:
    """Stands in for `compressor.progress.Progress` and raises `error` once epoch `epoch` is done (its
    checkpoint is on disk when `done` is called): a kill, or a Ctrl-C (`KeyboardInterrupt`), at that point."""

    def __init__(self, epoch: int, error: type[BaseException]) -> None:
        self.epoch, self.error = epoch, error

    def add(self, description, total):
        return 0

    def advance(self, task, n=1):
        pass

    def update(self, task, **kw):
        pass

    def log(self, msg):
        pass

    def done(self, kind, key=None, total=None, **info):
        if key == self.epoch:
            raise self.error
