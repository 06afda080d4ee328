"""Validated run configuration: budget parsing, config files, CLI overrides.

A config holds names and numbers only (never live modules), and unknown keys
are errors, so a typo in a config file cannot be silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .types import Budget

_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s)\s*$")


def parse_budget(text: str | float | int) -> Budget:
    """'5ms' -> Budget(5.0). Units: us, ms, s. A bare number is rejected: units matter."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        raise ConfigError(f"budget {text!r} has no unit; write e.g. '{text}ms' (units: us, ms, s)")
    if re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*", str(text)):
        raise ConfigError(f"budget {text!r} has no unit; write e.g. '{str(text).strip()}ms' (units: us, ms, s)")
    m = _BUDGET_RE.match(str(text))
    if not m:
        raise ConfigError(f"cannot parse budget {text!r}; write a number with a unit, e.g. 5ms, 800us, 0.01s")
    ms = float(m.group(1)) * _UNITS_MS[m.group(2)]
    if ms <= 0:
        raise ConfigError(f"budget {text!r} must be positive")
    return Budget(ms=ms, text=str(text).strip())


@dataclass(frozen=True)
class CompressConfig:
    """Everything a `compress` run needs; every field can come from a config file or a flag."""

    teacher: str = ""
    budget: str = ""
    data: str = "digits"
    profile: str = "host-cpu-1t"
    extra_profiles: tuple[str, ...] = ()  # also report latency on these (predicted where not measurable)
    out: str | None = None
    seed: int = 0
    image_size: int = 32  # built-in digits are 8x8; upsampled so models have realistic cost
    input_shape: tuple[int, ...] | None = None
    arch: str | None = None  # package.module:factory for a state_dict teacher
    trust_pickle: bool = False
    method: str = "nested"  # "nested" (search + MatTA family) or "skeleton" (fixed width ratios)
    sizes: tuple[float, ...] | None = None
    epochs: int = 12
    batch_size: int = 64
    search_trials: int = 24
    search_spaces: tuple[str, ...] = ("teacher_scaled", "cnn")
    proxy: str = "ensemble"  # rank-average of DisWOT, SNIP and params: see BENCHMARKS.md
    sampler: str = "nsga2"
    storage: str | None = None
    resume: bool = False
    int8: bool = False
    tensorrt: bool = False
    progress: bool = True
    calibration_models: int = 40  # models timed once per machine to fit the host latency predictor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(CompressConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    default = _FIELDS[key].default
    if key in ("input_shape", "sizes", "search_spaces", "extra_profiles"):
        if value is None:
            return None
        if isinstance(value, str):
            value = [v for v in re.split(r"[,x\s]+", value) if v]
        try:
            conv = float if key == "sizes" else (int if key == "input_shape" else str)
            return tuple(conv(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file; unknown keys are errors naming the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None
    if "compress" in raw and isinstance(raw["compress"], dict):
        raw = raw["compress"]  # allow a [compress] table
    values = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k not in _FIELDS:
            import difflib
            close = difflib.get_close_matches(k, _FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"config file {p}: unknown key {key!r}{hint}")
        values[k] = _coerce(k, value, f"config file {p}")
    return values


def resolve_config(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> CompressConfig:
    """Defaults < config file < command line. Validates what is cheap to validate here."""
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    cfg = CompressConfig(**merged)
    if not cfg.teacher:
        raise ConfigError("no teacher given: pass --teacher PATH (or set teacher in the config file)")
    if not cfg.budget:
        raise ConfigError("no budget given: pass --budget, e.g. --budget 5ms")
    parse_budget(cfg.budget)
    if cfg.method not in ("nested", "skeleton"):
        raise ConfigError(f"method must be 'nested' or 'skeleton', got {cfg.method!r}")
    if cfg.sizes is not None and not all(0 < r <= 1 for r in cfg.sizes):
        raise ConfigError(f"sizes are width ratios in (0, 1], got {cfg.sizes}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.search_trials < 1:
        raise ConfigError("epochs, batch_size and search_trials must be at least 1")
    if cfg.image_size < 4:
        raise ConfigError(f"image_size must be at least 4, got {cfg.image_size}")
    return cfg
