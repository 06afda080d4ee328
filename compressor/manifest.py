"""The run folder's `manifest.json`: what was produced, with every figure.

The manifest is written LAST and atomically (temp file + rename), so a folder
with a manifest is a complete run and a failed run never looks complete. It is
also the restore record: a model is rebuilt from arch + weights, never a pickle.

The schema is documented in `docs/manifest.md` and checked by `validate_manifest`
(declared once below, in `_MANIFEST`). Readers ignore keys they do not know, so
adding an optional key keeps `SCHEMA_VERSION`; removing, renaming or changing
the meaning of a key bumps it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .files import json_safe, write_json
from .types import to_jsonable

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "example_manifest",
    "normalize_paths",
    "read_manifest",
    "relative_path",
    "resolve_path",
    "validate_manifest",
    "write_manifest",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


# --------------------------------------------------------------------------- read / write


def write_manifest(run_dir: Path, manifest: Mapping[str, Any], *, validate: bool = True) -> Path:
    """Validate (by default) and atomically write `run_dir/manifest.json`.

    Validation runs on the JSON form, so records (`LatencyReport`, ...) may be passed
    as dataclasses. A manifest that would not read back is refused before writing.
    """
    version = manifest.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ConfigError(f"manifest schema_version {version!r}: this version writes {SCHEMA_VERSION}")
    data = normalize_paths(run_dir, {"schema_version": SCHEMA_VERSION, **manifest})
    if validate:
        validate_manifest(data)
    path = Path(run_dir) / MANIFEST_NAME
    write_json(path, data)
    return path


def read_manifest(run_dir_or_file: Path | str) -> dict[str, Any]:
    """Read and validate a manifest from a run folder (or the file itself)."""
    p = Path(run_dir_or_file)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ConfigError(f"no manifest at {p} (is this a finished run folder?)")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"manifest {p} is unreadable: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"manifest {p} is not a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"manifest {p} has schema_version {data.get('schema_version')!r}; "
            f"this version reads {SCHEMA_VERSION}"
        )
    validate_manifest(data, where=str(p))
    return data


# --------------------------------------------------------------------------- helpers for writers


def relative_path(run_dir: Path | str, path: Path | str) -> str:
    """`path` as the manifest stores it: relative to the run folder, POSIX separators.

    Run-relative paths keep a run folder valid when it is moved, copied or mounted
    elsewhere (an artefact store, a serving container).
    """
    p, root = Path(path).resolve(), Path(run_dir).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(f"{path} is outside the run folder {run_dir}") from None


def normalize_paths(run_dir: Path | str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `manifest` whose model file paths are run-relative where the files are in the run folder.

    Writers may hand over paths as they built them (absolute, or relative to the working
    directory, e.g. `runs/x/models/s50/model.onnx`); the files exist when the manifest is
    written, so each path is resolved unambiguously: a path that already names a file
    under `run_dir` is kept, one that names a file in the run folder from the working
    directory is rewritten, anything else (outside the run folder) is left as written.
    """
    root = Path(run_dir)
    data = json.loads(json.dumps(json_safe(to_jsonable(manifest))))  # a deep copy in plain JSON values

    def fix(stored: Any) -> Any:
        if not isinstance(stored, str) or not stored:
            return stored
        p = Path(stored)
        if not p.is_absolute() and (root / p).exists():
            return p.as_posix()
        if p.exists() and p.resolve().is_relative_to(root.resolve()):
            return p.resolve().relative_to(root.resolve()).as_posix()
        return stored

    for model in data.get("models", []) if isinstance(data.get("models"), list) else []:
        if isinstance(model, dict) and isinstance(model.get("files"), dict):
            model["files"] = {role: fix(path) for role, path in model["files"].items()}
        if isinstance(model, dict) and isinstance(model.get("int8"), dict):
            model["int8"]["file"] = fix(model["int8"].get("file"))
        formats = model.get("formats") if isinstance(model, dict) else None
        for fmt in formats.values() if isinstance(formats, dict) else ():
            if isinstance(fmt, dict) and "file" in fmt:
                fmt["file"] = fix(fmt["file"])
    return data


def resolve_path(run_dir: Path | str, stored: str) -> Path:
    """The file a manifest path names: run-relative, or absolute as written."""
    p = Path(stored)
    return p if p.is_absolute() else Path(run_dir) / p


# --------------------------------------------------------------------------- schema
#
# A tiny declarative schema: each node checks one value and names the failing path.
# Kept here rather than in a JSON-Schema file so the rules and their error messages
# live next to the code that writes the manifest (and no new dependency is needed).


class _Invalid(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def _show(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"a {'mapping' if isinstance(v, dict) else 'list'}"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class _Type:
    kinds: tuple[type, ...]
    label: str

    def check(self, v: Any, where: str) -> None:
        if isinstance(v, bool) and bool not in self.kinds:
            raise _Invalid(where, f"must be {self.label}, got {_show(v)}")
        if not isinstance(v, self.kinds):
            raise _Invalid(where, f"must be {self.label}, got {_show(v)}")


@dataclass(frozen=True)
class _Null:
    inner: Any

    def check(self, v: Any, where: str) -> None:
        if v is not None:
            self.inner.check(v, where)


@dataclass(frozen=True)
class _Enum:
    options: tuple[str, ...]

    def check(self, v: Any, where: str) -> None:
        if v not in self.options:
            raise _Invalid(where, f"must be one of {', '.join(self.options)}, got {_show(v)}")


@dataclass(frozen=True)
class _AnyOf:
    options: tuple[Any, ...]
    label: str

    def check(self, v: Any, where: str) -> None:
        for option in self.options:
            try:
                option.check(v, where)
                return
            except _Invalid:
                continue
        raise _Invalid(where, f"must be {self.label}, got {_show(v)}")


@dataclass(frozen=True)
class _List:
    item: Any

    def check(self, v: Any, where: str) -> None:
        _LIST.check(v, where)
        for i, x in enumerate(v):
            self.item.check(x, f"{where}[{i}]")


@dataclass(frozen=True)
class _Map:
    """A mapping from free-form string keys (profile names, file roles) to `value`."""

    value: Any

    def check(self, v: Any, where: str) -> None:
        _DICT.check(v, where)
        for k, x in v.items():
            self.value.check(x, f"{where}[{k!r}]")


@dataclass(frozen=True)
class _Obj:
    """A mapping with named keys; unknown keys are allowed (forward compatibility)."""

    required: Mapping[str, Any]
    optional: Mapping[str, Any] = field(default_factory=dict)

    def check(self, v: Any, where: str) -> None:
        _DICT.check(v, where)
        for key, spec in self.required.items():
            if key not in v:
                raise _Invalid(where, f"missing required key {key!r}")
            spec.check(v[key], f"{where}.{key}" if where else key)
        for key, spec in self.optional.items():
            if key in v:
                spec.check(v[key], f"{where}.{key}" if where else key)


_STR = _Type((str,), "a string")
_INT = _Type((int,), "an integer")
_NUM = _Type((int, float), "a number")
_BOOL = _Type((bool,), "true or false")
_DICT = _Type((dict,), "a mapping")
_LIST = _Type((list,), "a list")

_LATENCY = _Obj(
    required={
        "profile": _STR, "stat": _Enum(("p50", "p90", "p99")), "p50_ms": _NUM, "p90_ms": _NUM,
        "p99_ms": _NUM, "mean_ms": _NUM, "std_ms": _NUM, "cov": _NUM, "samples": _INT, "measured": _BOOL,
    },
    optional={"batch_size": _INT, "env": _DICT, "warnings": _List(_STR), "spread_ms": _NUM},
)
_LATENCIES = _Map(_LATENCY)

_MODEL = _Obj(
    required={
        "name": _STR, "ratio": _AnyOf((_NUM, _Map(_NUM)), "a number or a mapping of group to number"),
        "files": _Obj(required={"onnx": _STR},
                      optional={"onnx_int8": _STR, "torchscript": _STR, "pt2": _STR,
                                "tensorrt": _STR, "model_card": _STR}),
        "sha256": _Map(_STR), "params": _INT, "macs": _INT, "accuracy": _NUM,
        "teacher_agreement": _NUM, "latency": _LATENCIES, "meets_budget": _BOOL,
        "onnx_max_abs_diff": _Null(_NUM), "parity_ok": _BOOL,
    },
    optional={
        "int8": _Obj(required={"accuracy": _NUM, "latency": _LATENCIES, "file": _STR},
                     optional={"teacher_agreement": _NUM, "agreement_with_fp32": _NUM, "settings": _DICT,
                               "speedup": _Null(_NUM), "faster_than_fp32": _BOOL, "selectable": _BOOL}),
        "notes": _List(_STR),
        # edge formats (--formats): one entry per requested format; `reason` says why one is not ok
        "formats": _Map(_Obj(required={"ok": _BOOL}, optional={
            "file": _STR, "runtime": _STR, "reason": _STR, "notes": _List(_STR), "latency": _LATENCY,
            "parity": _Obj(required={"max_abs_diff": _Null(_NUM)},
                           optional={"argmax_agreement": _Null(_NUM), "samples": _INT, "atol": _Null(_NUM),
                                     "ok": _BOOL}),
        })),
    },
)

_MANIFEST = _Obj(
    required={
        "schema_version": _INT, "created": _STR, "compressor_version": _STR,
        "versions": _Map(_Null(_STR)), "config": _DICT,
        "budget": _Obj(required={"text": _STR, "ms": _NUM, "profile": _STR,
                                 "stat": _Enum(("p50", "p90", "p99"))},
                       optional={"factor": _NUM, "teacher_ms": _NUM}),
        "teacher": _Obj(required={"path": _STR, "sha256": _STR, "format": _STR, "params": _INT,
                                  "macs": _INT, "accuracy": _Null(_NUM), "latency": _LATENCIES}),
        "models": _List(_MODEL),
        "selected": _Null(_STR),
        "budget_met": _BOOL,
        "tensorrt": _Obj(required={"available": _BOOL, "reason": _STR}),
    },
    optional={
        "verification": _List(_Obj(required={"size": _STR, "first": _LATENCY, "second": _LATENCY,
                                             "holds": _BOOL}, optional={"third": _LATENCY, "after_miss": _BOOL})),
        "stages": _Map(_NUM),
        "search": _Obj(required={}, optional={
            "pareto": _List(_Obj(required={"arch": _DICT, "proxy_scores": _Map(_Null(_NUM)),
                                           "est_latency_ms": _Null(_NUM)},
                                 optional={"params": _INT, "macs": _INT, "trial_number": _INT})),
            "storage": _STR,
            # measured before training (`premeasure`): each candidate and nested size checked, or why skipped
            "verified": _Obj(required={}, optional={
                "checked": _List(_Obj(required={"name": _STR, "role": _STR, "predicted_ms": _NUM,
                                                "measured_ms": _NUM, "error": _Null(_NUM), "fits": _BOOL},
                                      optional={"trial_number": _Null(_INT), "spread_ms": _NUM, "plan": _INT})),
                "reselected": _BOOL, "skipped": _STR,
            }),
            # the predictor corrected on the teacher's operator mix (`anchor`), or why not
            "anchor": _Obj(required={}, optional={
                "method": _STR, "scale": _NUM, "coef": _Map(_NUM), "host_coef": _Map(_NUM),
                "timed": _List(_Obj(required={"name": _STR, "predicted_ms": _NUM, "measured_ms": _NUM},
                                    optional={"arch": _Null(_DICT), "corrected_ms": _NUM, "error_before": _NUM,
                                              "error_after": _NUM})),
                "fit_error": _Map(_NUM), "skipped": _STR, "profile": _STR,
            }),
        }),
        "training": _Obj(required={}, optional={
            "history": _List(_Obj(required={"epoch": _INT}, optional={
                "loss": _Null(_NUM),
                "val_acc": _AnyOf((_Null(_NUM), _Map(_Null(_NUM))), "a number or a mapping of size to number"),
                "seconds": _NUM,
            })),
            # a bf16 run whose gradients were not finite in a step: float32 from this epoch on
            "precision_fallback_epoch": _INT,
            # a long run whose validation accuracy stopped improving: cooled down and ended early
            "stopped_early": _Obj(required={"plateau_epoch": _INT, "epochs_run": _INT, "epochs_planned": _INT}),
            # epochs that diverged and were rolled back at a lower learning rate (distill.guard)
            "rollbacks": _List(_Obj(required={"epoch": _INT, "back_to": _INT, "lr_scale": _NUM}, optional={
                "loss": _AnyOf((_NUM, _STR), "a number, or nan/inf as text"), "best_loss": _Null(_NUM),
                "accuracy": _Null(_NUM), "best_accuracy": _Null(_NUM),
            })),
        }),
    },
)


def validate_manifest(manifest: Mapping[str, Any], *, where: str = "manifest") -> None:
    """Check required keys, types and cross-references; raise `ConfigError` in one line."""
    try:
        _MANIFEST.check(manifest, "")
        _check_references(manifest)
    except _Invalid as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_references(m: Mapping[str, Any]) -> None:
    if m["schema_version"] != SCHEMA_VERSION:
        raise _Invalid("schema_version", f"is {m['schema_version']}; this version reads {SCHEMA_VERSION}")
    if m["budget"]["ms"] <= 0:
        raise _Invalid("budget.ms", f"must be positive, got {m['budget']['ms']}")
    names = [model["name"] for model in m["models"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _Invalid("models", f"duplicate size names {duplicates}")
    if m["selected"] is not None and m["selected"] not in names:
        raise _Invalid("selected", f"{m['selected']!r} is not one of the models {names}")
    if m["budget_met"] and m["selected"] is None:
        raise _Invalid("budget_met", "is true but no model is selected")
    for i, model in enumerate(m["models"]):
        for profile, report in model["latency"].items():
            if report["profile"] != profile:
                raise _Invalid(f"models[{i}].latency[{profile!r}].profile",
                               f"is {report['profile']!r}, expected {profile!r}")


# --------------------------------------------------------------------------- example


def example_manifest() -> dict[str, Any]:
    """A small valid manifest with fixed figures (no files behind it).

    Used by `docs/manifest.md`, by tests of readers (picker, report), and to preview
    the report layout without running a compression.
    """

    def lat(profile: str, p50: float, measured: bool = True) -> dict[str, Any]:
        if not measured:
            return {"profile": profile, "stat": "p50", "p50_ms": p50, "p90_ms": p50, "p99_ms": p50,
                    "mean_ms": p50, "std_ms": 0.0, "cov": 0.0, "samples": 0, "measured": False,
                    "batch_size": 1, "env": {"predictor": "roofline"}, "warnings": []}
        return {"profile": profile, "stat": "p50", "p50_ms": p50, "p90_ms": round(p50 * 1.08, 4),
                "p99_ms": round(p50 * 1.3, 4), "mean_ms": round(p50 * 1.03, 4), "std_ms": round(p50 * 0.05, 4),
                "cov": 0.05, "samples": 200, "measured": True, "batch_size": 1,
                "env": {"threads": 1, "onnxruntime": "1.32.0"}, "warnings": []}

    def model(name: str, ratio: float, acc: float, agree: float, cpu: float, edge: float,
              params: int, macs: int, diff: float, int8: bool = False) -> dict[str, Any]:
        files = {"onnx": f"{name}.onnx", "torchscript": f"{name}.ts.pt", "model_card": f"model_card_{name}.md"}
        m: dict[str, Any] = {
            "name": name, "ratio": ratio, "files": files,
            "sha256": {"onnx": "0" * 64}, "params": params, "macs": macs,
            "accuracy": acc, "teacher_agreement": agree,
            "latency": {"host-cpu-1t": lat("host-cpu-1t", cpu),
                        "jetson-orin-nano": lat("jetson-orin-nano", edge, False)},
            "meets_budget": cpu <= 1.0, "onnx_max_abs_diff": diff, "parity_ok": diff <= 1e-4,
        }
        if int8:
            files["onnx_int8"] = f"{name}.int8.onnx"
            m["int8"] = {"accuracy": round(acc - 0.004, 4), "file": f"{name}.int8.onnx",
                         "latency": {"host-cpu-1t": lat("host-cpu-1t", round(cpu * 0.6, 4))}}
        return m

    return {
        "schema_version": SCHEMA_VERSION,
        "created": "2026-01-01T00:00:00Z",
        "compressor_version": "0.1.0",
        "versions": {"python": "3.11.7", "torch": "2.13.0", "onnx": "1.23.2", "onnxruntime": "1.32.0",
                     "optuna": "5.0.0", "torch_pruning": "1.6.1"},
        "config": {"teacher": "teacher.pt", "budget": "1ms", "data": "digits", "profile": "host-cpu-1t"},
        "budget": {"text": "1ms", "ms": 1.0, "profile": "host-cpu-1t", "stat": "p50"},
        "teacher": {"path": "teacher.pt", "sha256": "f" * 64, "format": "torchscript", "params": 1_200_000,
                    "macs": 95_000_000, "accuracy": 0.985,
                    "latency": {"host-cpu-1t": lat("host-cpu-1t", 3.2),
                                "jetson-orin-nano": lat("jetson-orin-nano", 1.1, False)}},
        "models": [
            model("s100", 1.0, 0.981, 0.990, 1.9, 0.70, 610_000, 48_000_000, 2.1e-6),
            model("s50", 0.5, 0.972, 0.975, 0.85, 0.32, 160_000, 12_500_000, 1.5e-6, int8=True),
            model("s25", 0.25, 0.941, 0.947, 0.42, 0.15, 42_000, 3_300_000, 9.0e-7),
        ],
        "selected": "s50",
        "budget_met": True,
        "search": {
            "pareto": [
                {"arch": {"family": "cnn", "widths": [16, 32]}, "proxy_scores": {"diswot": -0.8},
                 "est_latency_ms": 0.5, "params": 60_000, "macs": 4_000_000},
                {"arch": {"family": "cnn", "widths": [32, 64]}, "proxy_scores": {"diswot": -0.5},
                 "est_latency_ms": 1.2, "params": 240_000, "macs": 16_000_000},
                {"arch": {"family": "cnn", "widths": [48, 96]}, "proxy_scores": {"diswot": -0.4},
                 "est_latency_ms": 2.3, "params": 540_000, "macs": 36_000_000},
            ],
            "storage": "sqlite:///study.db",
        },
        "training": {"history": [
            {"epoch": e, "loss": round(2.0 * 0.7**e, 4),
             "val_acc": {"s100": round(0.98 - 0.5 * 0.6**e, 4), "s50": round(0.97 - 0.5 * 0.6**e, 4),
                         "s25": round(0.94 - 0.5 * 0.6**e, 4)}}
            for e in range(1, 9)
        ]},
        "tensorrt": {"available": False, "reason": "TensorRT: not available on this machine"},
    }
