"""Validated run configuration: config files, CLI overrides, every option checked up front.

A config holds names and numbers only (never live modules). Config-file keys are
the flag names (``--also-profile`` is ``also_profile``, ``--trials`` is
``trials``), unknown keys are errors, and every option that names something
(profile, proxy, search spaces, losses, sampler) is resolved in
`resolve_config`, before any data is loaded or any model trained, so a typo
costs a second, not a run.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .budget import BudgetSpec, parse_budget
from .errors import ConfigError

__all__ = ["CompressConfig", "load_config_file", "parse_budget", "resolve_config"]

METHODS = ("nested", "skeleton")
SAMPLERS = ("nsga2", "tpe")
LM_RECIPES = ("chain", "sampled", "all")
SCHEDULES = ("sandwich", "chain")  # compressor.distill.train.SCHEDULES  # compressor.lm.train.RECIPES (kept here: config imports no torch)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")  # compressor.distill.precision (kept here: config imports no torch)
# Deployment formats per size (`export.formats`); ONNX is the base and is always written.
FORMATS = ("onnx", "ort", "openvino", "executorch")


@dataclass(frozen=True)
class CompressConfig:
    """Everything a `compress` run needs; every field can come from a config file or a flag.

    `budget` is parsed on construction (`BudgetSpec`): it is parsed once, here.
    """

    teacher: str = ""
    budget: BudgetSpec | str = ""
    data: str = "digits"
    profile: str = "host-cpu-1t"
    also_profile: tuple[str, ...] = ()  # also report latency on these (predicted where not measurable)
    out: str | None = None
    seed: int = 0
    image_size: int = 32  # built-in digits are 8x8; upsampled so models have realistic cost
    input_shape: tuple[int, ...] | None = None
    arch: str | None = None  # package.module:factory for a state_dict teacher
    arch_kwargs: Mapping[str, Any] | None = None  # keyword arguments for the factory, e.g. {"num_classes": 10}
    weights: str | None = None  # trained weights of a zoo teacher (teacher = "timm:NAME" / "torchvision:NAME")
    trust_pickle: bool = False
    method: str = "nested"  # "nested" (search + MatTA family) or "skeleton" (fixed width ratios)
    sizes: tuple[float, ...] | None = None
    epochs: int | None = None  # None: 12, more for a family from scratch (distill/epochs.py)
    steps: int | None = None  # language models: training steps of batch_size windows (default: `epochs` passes)
    lm_recipe: str = "chain"  # language models: the nested recipe (compressor/lm/train.py)
    lm_taid: bool = False  # language models: TAID's interpolated targets (lm/train.py TAIDState)
    schedule: str = "sandwich"  # image/1-D nested runs: which granularities train on each step (distill/train.py)
    # image/1-D nested runs of 24+ epochs: cool down and end once validation stops improving (distill/plateau.py)
    early_stop: bool = True
    train_precision: str = "auto"  # image/1-D runs: distillation's forward passes' arithmetic (distill/precision.py)
    batch_size: int = 64
    trials: int = 24
    spaces: tuple[str, ...] = ("teacher_scaled", "cnn")
    proxy: str = "diswot_inherited+params"  # its pick about as good as training every candidate: BENCHMARKS.md "Search pick"
    sampler: str = "nsga2"
    losses: tuple[str, ...] = ()  # extra distillation losses, "name" or "name:weight" (e.g. dkd:0.5)
    storage: str | None = None
    study: str = "student-search"  # the study's name in `storage` (one storage can hold many)
    resume: bool = False
    int8: bool = False
    tensorrt: bool = False
    formats: tuple[str, ...] = ("onnx",)  # also write each size as: ort, openvino, executorch
    progress: bool = True
    # models timed once per machine to fit the host latency predictor: a fit on 16 predicts held-out
    # networks as well as one on 40 (median error 1.9 % against 3.5 %, 90th percentile 13.5 % against
    # 12.6 %) in 3.6 s instead of 9.1 (BENCHMARKS.md "Latency prediction"); 8 are worse at the tail. The
    # anchor stage then corrects the fit on the teacher's own networks
    calibration_models: int = 16
    verify_top: int = 3  # search candidates measured untrained before distillation (`premeasure`); 0 = off
    anchor_students: int = 4  # teacher-derived students timed to correct the predictor (`anchor`); 0 = off
    license: str | None = None  # the teacher's licence, stated in the model cards (a Hub id such as apache-2.0)
    mlflow: str | None = None  # MLflow tracking URI: the finished run is logged there (`tracking`)
    device: str = "cpu"  # where search proxies and distillation run: cpu, cuda, or auto (cuda where there is one)

    def __post_init__(self) -> None:
        if isinstance(self.budget, str) and self.budget:
            object.__setattr__(self, "budget", parse_budget(self.budget))

    @property
    def budget_spec(self) -> BudgetSpec:
        if not isinstance(self.budget, BudgetSpec):
            raise ConfigError("no budget given: pass --budget, e.g. --budget 5ms or --budget 0.5x")
        return self.budget

    @property
    def loss_weights(self) -> tuple[tuple[str, float], ...]:
        """`losses` as (name, weight) pairs; a bare name weighs 1."""
        out = []
        for item in self.losses:
            name, _, weight = item.partition(":")
            try:
                out.append((name.strip(), float(weight) if weight else 1.0))
            except ValueError:
                raise ConfigError(f"loss {item!r}: the weight after ':' must be a number, e.g. dkd:0.5") from None
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """The settings as written to config.json, the manifest and a shared study (a password in
        the storage URL masked: those files are shared and read by people)."""
        d = dataclasses.asdict(self)
        d["budget"] = self.budget.text if isinstance(self.budget, BudgetSpec) else self.budget
        if self.storage:
            from .search.study import shown

            d["storage"] = shown(self.storage)
        return d


_FIELDS = {f.name: f for f in dataclasses.fields(CompressConfig)}
_TUPLES = {"input_shape": int, "sizes": float, "spaces": str, "also_profile": str, "losses": str, "formats": str}


def coerce(key: str, value: Any, source: str) -> Any:
    """One option's value as the config field wants it; lists may be written 'a,b' or '1x32x32'."""
    default = _FIELDS[key].default
    if key in _TUPLES:
        if value is None:
            return None
        if isinstance(value, str):
            value = [v for v in re.split(r"[,x\s]+" if key == "input_shape" else r"[,\s]+", value) if v]
        try:
            return tuple(_TUPLES[key](v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}") from None
    if key == "arch_kwargs":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise ConfigError(f"{source}: arch_kwargs must be a JSON object such as '{{\"num_classes\": 10}}' "
                                  f"({e})") from None
        if value is not None and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
            raise ConfigError(f"{source}: arch_kwargs must be an object of keyword arguments, got {value!r}")
        return value
    if key == "budget":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{source}: budget must be a string such as '5ms' or '0.5x', got {value!r}")
        return parse_budget(value)
    if key in ("steps", "epochs"):  # optional integers
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
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
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a table of options")
    if "compress" in raw and isinstance(raw["compress"], dict):
        raw = raw["compress"]  # allow a [compress] table
    values = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k not in _FIELDS:
            close = difflib.get_close_matches(k, _FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"config file {p}: unknown key {key!r}{hint}")
        values[k] = coerce(k, value, f"config file {p}")
    return values


def resolve_config(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> CompressConfig:
    """Defaults < config file < command line, then every option validated (cheap checks first)."""
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    unknown = sorted(set(merged) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    cfg = CompressConfig(**merged)
    if not cfg.teacher:
        raise ConfigError("no teacher given: pass --teacher PATH (or set teacher in the config file)")
    cfg.budget_spec  # noqa: B018 - raises when missing
    _check_choice("method", cfg.method, METHODS)
    _check_choice("sampler", cfg.sampler, SAMPLERS)
    _check_choice("lm_recipe", cfg.lm_recipe, LM_RECIPES)
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_choice("train_precision", cfg.train_precision, TRAIN_PRECISIONS)
    if cfg.schedule == "chain" and cfg.losses:
        raise ConfigError("--losses compare a student with the teacher, which --schedule chain does not run on a "
                          "student's step: use --schedule sandwich with them")
    unknown_formats = [f for f in cfg.formats if f not in FORMATS]
    if unknown_formats:
        close = difflib.get_close_matches(unknown_formats[0], FORMATS, n=1)
        raise ConfigError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(map(repr, unknown_formats))}"
                          + (f" (did you mean {close[0]}?)" if close else ""))
    # ONNX first and always (every other format is checked against the same inputs), each name once
    cfg = dataclasses.replace(cfg, formats=tuple(dict.fromkeys(("onnx", *cfg.formats))))
    if cfg.sizes is not None and not all(0 < r <= 1 for r in cfg.sizes):
        raise ConfigError(f"sizes are width ratios in (0, 1], got {cfg.sizes}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"steps must be at least 1, got {cfg.steps}")
    for key in ("epochs", "batch_size", "trials", "calibration_models"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.verify_top < 0:
        raise ConfigError(f"verify_top must be 0 (off) or more, got {cfg.verify_top}")
    if not 0 <= cfg.anchor_students <= len(_anchor_plan()):
        raise ConfigError(f"anchor_students must be 0 (off) to {len(_anchor_plan())}, got {cfg.anchor_students}")
    if cfg.image_size < 4:
        raise ConfigError(f"image_size must be at least 4, got {cfg.image_size}")
    _check_components(cfg)
    _check_viewers(cfg)
    return cfg


def _check_choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key} must be one of {', '.join(options)}, got {value!r}")


def _check_viewers(cfg: CompressConfig) -> None:
    """The options that only shape what others read: the cards' licence and the MLflow target."""
    if cfg.license is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", cfg.license):
        raise ConfigError(f"license must be a licence id such as apache-2.0 or mit, got {cfg.license!r}")
    if cfg.mlflow is not None:
        from .tracking import require_mlflow

        require_mlflow(cfg.mlflow)  # before the run, not after it: a missing package costs a second


def _check_components(cfg: CompressConfig) -> None:
    """Names resolved against their registries and files: profiles, proxy, spaces, losses."""
    from .device import check_device
    from .distill.losses import LOSSES
    from .hardware import load_profile
    from .search import SPACES, get_proxy

    check_device(cfg.device)
    for name in (cfg.profile, *cfg.also_profile):
        load_profile(name)
    try:
        get_proxy(cfg.proxy)
    except ValueError as e:  # an ensemble of fewer than two members
        raise ConfigError(f"proxy {cfg.proxy!r}: {e}") from None
    if not cfg.spaces:
        raise ConfigError("spaces must name at least one search space")
    for space in cfg.spaces:
        SPACES.get(space)
    for name, weight in cfg.loss_weights:
        LOSSES.get(name)
        if weight <= 0:
            raise ConfigError(f"loss {name}: weight must be positive, got {weight:g}")


def _anchor_plan() -> tuple:
    from .anchor import PLAN

    return PLAN
