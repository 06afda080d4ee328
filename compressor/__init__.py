"""compressor: search, nested distillation, pruning, export and profiling of servable model sizes.

Python API::

    import compressor
    result = compressor.compress(teacher="teacher.pt", budget="2ms", out="runs/exp1")
    pick, session = compressor.load_session(result.run_dir, budget="2ms", profile="host-cpu-1t")
"""
from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__", "compress", "pick", "load_session", "load_teacher", "load_data", "load_profile",
           "list_profiles", "read_manifest", "CompressConfig", "CompressorError"]


def compress(config_file: str | None = None, **options: Any):
    """Run the whole pipeline; `options` are CompressConfig fields (teacher, budget, data, ...).
    Returns a `pipeline.RunResult` (run_dir, manifest, selected, exit_code)."""
    from .config import load_config_file, resolve_config
    from .pipeline import run

    return run(resolve_config(load_config_file(config_file) if config_file else {}, options))


def __getattr__(name: str) -> Any:
    # heavy modules (torch, onnxruntime, optuna) load on first use, not on `import compressor`
    lazy = {"pick": ("pick", "pick"), "load_session": ("pick", "load_session"),
            "load_teacher": ("intake", "load_teacher"), "load_data": ("intake", "load_data"),
            "load_profile": ("hardware", "load_profile"), "list_profiles": ("hardware", "list_profiles"),
            "read_manifest": ("manifest", "read_manifest"), "CompressConfig": ("config", "CompressConfig"),
            "CompressorError": ("errors", "CompressorError")}
    if name in lazy:
        import importlib

        mod, attr = lazy[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
