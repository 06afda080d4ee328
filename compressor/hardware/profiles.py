"""Hardware profiles: one TOML file per target, validated on load.

A profile is data, not code (a config holds names and numbers, never live
objects), so adding a target means adding a file to ``compressor/profiles/`` (shipped
as package data; ``$COMPRESSOR_PROFILES_DIR`` points at another folder). Every file is
checked against one schema before it becomes a `HardwareProfile`: an unknown key
or a bad value is a one-line `ConfigError` naming the file and the key, because
a typo such as ``repeat = 5`` that silently falls back to a default would make
every latency figure taken with it quietly wrong.

File layout (top-level keys map 1:1 onto `HardwareProfile` fields)::

    name = "host-cpu-1t"            # required; equals the file's stem
    backend = "onnxruntime-cpu"     # required; onnxruntime-cpu | openvino-cpu | torch-cuda | tensorrt
    measured = true                 # false: a target we can only predict for
    threads = 1                     # 0 = all cores
    batch_size = 1
    precision = "fp32"              # fp32 | fp16 | int8
    warmup_runs = 10                # warm-up lasts at least this many runs ...
    warmup_seconds = 0.2            # ... and at least this long
    repeats = 100                   # timed runs: at least this many ...
    min_seconds = 0.5               # ... and at least this long
    stat = "p50"                    # the statistic a budget applies to
    round_to = 8                    # channel counts are rounded to this multiple ("auto":
                                    # this CPU's channel block, for host CPU profiles)
    isa = "arm-dotprod"             # predicted CPU targets: the instruction-set class INT8 is
                                    # tuned for (hardware.isa.CPU_CLASSES); measured ones read the host

    [device]                        # datasheet figures; required when measured = false
    peak_gflops = { fp32 = 1280.0, fp16 = 10240.0 }
    memory_bandwidth_gbs = 68.0
    layer_overhead_us = 10.0
"""
from __future__ import annotations

import atexit
import dataclasses
import difflib
import functools
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..types import DeviceSpec, HardwareProfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the `tomli` backport
    import tomli as tomllib

__all__ = [
    "BACKEND_PRECISIONS",
    "DEFAULT_PROFILE",
    "PROFILES_ENV",
    "PRECISIONS",
    "list_profiles",
    "load_profile",
    "override_profile",
    "parse_profile",
    "profiles_dir",
    "round_channels",
]

PROFILES_ENV = "COMPRESSOR_PROFILES_DIR"
DEFAULT_PROFILE = "host-cpu-1t"
PRECISIONS = ("fp32", "fp16", "int8")
STATS = ("p50", "p90", "p99")
# Which precisions each backend can run. ORT's CPU kernels for fp16 are mostly
# reference implementations (slower than fp32), so an fp16 CPU profile would
# describe a deployment nobody should choose.
BACKEND_PRECISIONS: Mapping[str, tuple[str, ...]] = {
    "onnxruntime-cpu": ("fp32", "int8"),
    # fp32 only: the OpenVINO backend pins f32 inference precision, and INT8 copies are
    # timed on ONNX Runtime profiles (an int8 OpenVINO figure has not been checked here)
    "openvino-cpu": ("fp32",),
    "torch-cuda": ("fp32", "fp16"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Key:
    """One allowed key: how to check its value, and whether it must be present."""

    check: Callable[[Any], Any]  # returns the normalised value or raises _Bad
    required: bool = False


class _Bad(ValueError):
    """A value failed its check; the message completes 'key K must be ...'."""


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"a string but got {_show(v)}")
    return v


def _name(v: Any) -> str:
    v = _string(v)
    if not _NAME_RE.match(v):
        raise _Bad(f"lower-case letters, digits, '.', '_' or '-' but got {v!r}")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"true or false but got {_show(v)}")
    return v


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        # bool is a subclass of int in Python; `threads = true` is a mistake, not 1
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"an integer but got {_show(v)}")
        if v < minimum:
            raise _Bad(f"at least {minimum} but got {v}")
        return v

    return check


def _number(minimum: float, strict: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"a number but got {_show(v)}")
        if v != v or v in (float("inf"), float("-inf")):
            raise _Bad(f"a finite number but got {v}")
        if v < minimum or (strict and v == minimum):
            raise _Bad(f"{'greater than' if strict else 'at least'} {minimum:g} but got {v}")
        return float(v)

    return check


def _round_to(v: Any) -> int | str:
    if v == "auto":
        return v
    try:
        return _integer(1)(v)
    except _Bad:
        raise _Bad(f'a positive integer or "auto" but got {_show(v)}') from None


def _isa(v: Any) -> str:
    from .isa import CPU_CLASSES

    return _choice(CPU_CLASSES)(v)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        v = _string(v)
        if v not in options:
            close = difflib.get_close_matches(v, options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Bad(f"one of {', '.join(options)} but got {v!r}{hint}")
        return v

    return check


def _show(v: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string",
            dict: "table", list: "array"}.get(type(v), type(v).__name__)
    return f"{kind} {v!r}"


_PROFILE_KEYS: Mapping[str, _Key] = {
    "name": _Key(_name, required=True),
    "backend": _Key(_choice(tuple(BACKEND_PRECISIONS)), required=True),
    "description": _Key(_string),
    "measured": _Key(_boolean),
    "threads": _Key(_integer(0)),
    "batch_size": _Key(_integer(1)),
    "precision": _Key(_choice(PRECISIONS)),
    "warmup_runs": _Key(_integer(0)),
    "warmup_seconds": _Key(_number(0.0)),
    "repeats": _Key(_integer(1)),
    "min_seconds": _Key(_number(0.0)),
    "stat": _Key(_choice(STATS)),
    "round_to": _Key(_round_to),
    "isa": _Key(_isa),
}
_DEVICE_KEYS: Mapping[str, _Key] = {
    "peak_gflops": _Key(lambda v: v, required=True),  # a table, checked per precision below
    "memory_bandwidth_gbs": _Key(_number(0.0, strict=True), required=True),
    "layer_overhead_us": _Key(_number(0.0), required=True),
}


def _unknown_key(where: str, key: str, known: Mapping[str, _Key], prefix: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return ConfigError(f"{where}: unknown key '{prefix}{key}'{hint} "
                       f"(allowed: {', '.join(prefix + k for k in known)})")


def _check_table(where: str, table: Mapping[str, Any], keys: Mapping[str, _Key],
                 prefix: str = "", partial: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in keys:
            raise _unknown_key(where, key, keys, prefix)
        try:
            out[key] = keys[key].check(value)
        except _Bad as e:
            raise ConfigError(f"{where}: key '{prefix}{key}' must be {e}") from None
    for key, spec in keys.items():
        if spec.required and key not in table and not partial:
            raise ConfigError(f"{where}: missing required key '{prefix}{key}'")
    return out


def _device_spec(where: str, table: Any) -> DeviceSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: key 'device' must be a table but got {_show(table)}")
    values = _check_table(where, table, _DEVICE_KEYS, prefix="device.")
    peaks = values["peak_gflops"]
    if not isinstance(peaks, dict) or not peaks:
        raise ConfigError(f"{where}: key 'device.peak_gflops' must be a non-empty table "
                          f"of precision = GFLOP/s but got {_show(peaks)}")
    checked: dict[str, float] = {}
    for precision, gflops in peaks.items():
        key = f"device.peak_gflops.{precision}"
        if precision not in PRECISIONS:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed precisions: {', '.join(PRECISIONS)})")
        try:
            checked[precision] = _number(0.0, strict=True)(gflops)
        except _Bad as e:
            raise ConfigError(f"{where}: key '{key}' must be {e}") from None
    return DeviceSpec(peak_gflops=checked, memory_bandwidth_gbs=values["memory_bandwidth_gbs"],
                      layer_overhead_us=values["layer_overhead_us"])


def parse_profile(data: Mapping[str, Any], where: str) -> HardwareProfile:
    """Validate one parsed TOML document; `where` names it in every error."""
    top = dict(data)
    device_table = top.pop("device", None)
    values = _resolve_auto(where, _check_table(where, top, _PROFILE_KEYS))
    device = _device_spec(where, device_table) if device_table is not None else None
    profile = HardwareProfile(**values, device=device, path=where)
    _check_consistent(profile, where)
    return profile


def _resolve_auto(where: str, values: dict[str, Any]) -> dict[str, Any]:
    """``round_to = "auto"``: this CPU's channel block (MLAS computes convolutions
    in blocks of 16 channels with AVX-512, 8 with AVX2; OpenVINO's oneDNN kernels use
    the same blocked layouts), at least 8. Only a profile measured on this machine's
    CPU can ask for it."""
    if values.get("round_to") != "auto":
        return values
    if values.get("backend") not in ("onnxruntime-cpu", "openvino-cpu") or values.get("measured") is False:
        raise ConfigError(f'{where}: key \'round_to\' may be "auto" only for a measured onnxruntime-cpu or '
                          f"openvino-cpu profile (it reads this machine's CPU)")
    from .ort_cpu import cpu_channel_block

    return {**values, "round_to": max(8, cpu_channel_block())}


def _check_consistent(p: HardwareProfile, where: str) -> None:
    """Rules that involve more than one key."""
    allowed = BACKEND_PRECISIONS[p.backend]
    if p.precision not in allowed:
        raise ConfigError(f"{where}: key 'precision' must be one of {', '.join(allowed)} for backend "
                          f"{p.backend!r} but got {p.precision!r}")
    if p.isa and p.measured:
        raise ConfigError(f"{where}: key 'isa' is for predicted profiles (measured = false); a measured profile "
                          f"reads this machine's CPU")
    if not p.measured and p.device is None:
        raise ConfigError(f"{where}: missing required key 'device' (a predicted profile, "
                          f"measured = false, needs datasheet figures)")
    if p.device is not None and p.precision not in p.device.peak_gflops:
        raise ConfigError(f"{where}: missing required key 'device.peak_gflops.{p.precision}' "
                          f"(the profile's precision)")


# ----------------------------------------------------------------------------- lookup


def profiles_dir() -> Path:
    """The folder that holds the profiles looked up by name: ``$COMPRESSOR_PROFILES_DIR``
    or the built-in ``profiles/`` shipped inside the `compressor` package."""
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env).expanduser()
    return _builtin_dir()


@functools.lru_cache(maxsize=1)
def _builtin_dir() -> Path:
    """The package's ``profiles/`` as a real folder. An installed or source-tree
    package is on disk, so this is the folder itself; a package imported from a zip
    has its profiles copied once to a temporary folder (removed at exit)."""
    root = resources.files("compressor") / "profiles"
    if isinstance(root, Path):
        return root
    tmp = Path(tempfile.mkdtemp(prefix="compressor-profiles-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.endswith(".toml") and entry.is_file():
                (tmp / entry.name).write_bytes(entry.read_bytes())
    return tmp


def _read(path: Path) -> HardwareProfile:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: hardware profile file not found") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or a NUL inside the path
        raise ConfigError(f"{where}: cannot read hardware profile: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    return parse_profile(data, where)


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or os.sep in name_or_path or "/" in name_or_path


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> HardwareProfile:
    """A profile by NAME (a file ``<name>.toml`` in `profiles_dir()`) or by PATH to a
    ``.toml`` file. Raises `ConfigError` on a miss (with close names) or a bad file."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError(f"hardware profile must be a name or a .toml path but got {name_or_path!r}")
    if _looks_like_path(name_or_path):
        return _read(Path(name_or_path).expanduser())
    folder = profiles_dir()
    path = folder / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.toml"))
        close = difflib.get_close_matches(name_or_path, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown hardware profile {name_or_path!r}{hint} "
                          f"(known in {folder}: {', '.join(known) or 'none'})")
    profile = _read(path)
    if profile.name != path.stem:
        raise ConfigError(f"{path}: key 'name' must equal the file name {path.stem!r} "
                          f"(lookups are by name) but got {profile.name!r}")
    return profile


def list_profiles() -> list[HardwareProfile]:
    """Every profile in `profiles_dir()`, sorted by name; a bad file is an error, not
    skipped, so a broken built-in is found at once."""
    return [load_profile(stem) for stem in sorted(p.stem for p in profiles_dir().glob("*.toml"))]


# The timing of a measurement that informs a decision rather than a figure a user reads: each
# latency-calibration model, and the untrained candidates timed before distillation (premeasure).
# A decision needs a model's median within a few per cent, and the median of 20 runs gives that
# (benchmarks/results/latency_predictor.md compares the predictor fitted on such timings with one
# fitted on the profile's own); the profile's setting (>= 100 runs and 0.5 s, for p99) is kept
# for the reported figures.
QUICK_TIMING = {"warmup_runs": 3, "warmup_seconds": 0.05, "repeats": 20, "min_seconds": 0.1}


def quick_timing(profile: HardwareProfile) -> HardwareProfile:
    """`profile` with `QUICK_TIMING` (never longer than the profile's own setting)."""
    return override_profile(profile, **{k: min(v, getattr(profile, k)) for k, v in QUICK_TIMING.items()})


def override_profile(profile: HardwareProfile, **changes: Any) -> HardwareProfile:
    """A copy of `profile` with some fields changed, validated like a file would be
    (e.g. ``override_profile(p, repeats=5, min_seconds=0)`` for a quick measurement)."""
    if "device" in changes or "path" in changes:
        raise ConfigError("override_profile: 'device' and 'path' cannot be overridden")
    where = f"{profile.path or profile.name} (override)"
    values = _check_table(where, changes, _PROFILE_KEYS, partial=True)
    if values.get("round_to") == "auto":
        values = _resolve_auto(where, {"backend": profile.backend, "measured": profile.measured, **values})
        values = {k: v for k, v in values.items() if k in changes}
    new = dataclasses.replace(profile, **values)
    _check_consistent(new, where)
    return new


def round_channels(c: float, multiple: int) -> int:
    """`c` rounded to the nearest multiple of `multiple`, never below `multiple`.

    Kernels vectorise over channels (8 fp32 lanes with AVX2, tensor cores want
    multiples of 8 in fp16), so 60 channels can run slower than 64.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer but got {multiple!r}.")
    if c != c or c < 0:
        raise ValueError(f"channel count must be non-negative but got {c!r}.")
    # floor(x + 0.5): round half up, so 4 -> 8 with multiple 8 (Python's round() is banker's)
    return max(multiple, int(c / multiple + 0.5) * multiple)
