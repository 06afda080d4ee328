"""Errors the compiler raises on bad input or impossible requests.

The CLI prints any `CompressorError` as one line and exits with the error's
``exit_code``; `--debug` shows the traceback instead. `assert` is reserved for
internal invariants.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BUDGET_NOT_MET = 3


class CompressorError(Exception):
    """Base class: a problem the user can fix, reported in one line."""

    exit_code = EXIT_USAGE


class ConfigError(CompressorError):
    """A bad option, config file, budget string or hardware profile."""


class TeacherLoadError(CompressorError):
    """The teacher file is missing, corrupt, of unknown format, or untrusted."""


class DataError(CompressorError):
    """The data is missing, empty, or of the wrong shape."""


class ExportError(CompressorError):
    """A model could not be exported or its export does not match PyTorch."""


class BackendUnavailableError(CompressorError):
    """A runtime (TensorRT, CUDA, ...) is not available on this machine."""


class BudgetNotMetError(CompressorError):
    """No servable model meets the latency budget."""

    exit_code = EXIT_BUDGET_NOT_MET


class OutputError(CompressorError):
    """The output folder cannot be created or written."""
