"""`compress search-worker`: score trials of a study that a `compress` run drives.

The driving run (``compress --teacher ... --storage postgresql://... --study NAME``)
stores its settings, its resolved budget and its latency predictor in the study
when it creates it. A worker, on this machine or another, waits for that study,
reads them, loads the same teacher and data, and scores candidates until the study
holds its trial count; the driver waits for those trials, picks its student from
all of them and goes on to distillation. Workers never train, export or write a
run folder.

Every worker judges candidates with the driver's predictor, not one calibrated on
its own CPU: the workers of one study may run on different machines, and a
candidate's predicted latency must not depend on which of them drew it.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
from rich.console import Console

from .budget import Budget
from .config import _FIELDS, coerce, resolve_config
from .errors import ConfigError
from .hardware import load_profile
from .hardware.corrected import predictor_from_dict
from .hardware.predict import predictor_for
from .intake import load_data, load_teacher
from .pipeline import predicted_latency, search_config
from .progress import Progress
from .search.study import RUN_ATTR, _reading_study, open_storage, score_trials, shown

log = logging.getLogger(__name__)

# What a worker takes from the driver and what it decides itself: where the teacher and data
# lie on this machine may differ, the run folder and resume state are the driver's alone.
_WORKER_OWN = ("out", "resume", "progress", "storage", "study", "int8", "tensorrt", "formats", "mlflow", "license",
               "device")  # the driver's GPU says nothing of a worker's machine


@dataclass(frozen=True)
class WorkerResult:
    study: str
    storage: str
    scored: int  # trials this worker finished
    finished: int  # trials the study holds, all workers together
    n_trials: int
    seconds: float


def wait_for_study(storage: str, study: str, wait_s: float, console: Console | None = None) -> dict[str, Any]:
    """The driving run's settings, once its study exists in `storage` (polled for up to `wait_s`)."""
    with _reading_study(storage):  # an unreachable server or a damaged study: one line
        store, location = open_storage(storage, Path(tempfile.gettempdir()))
    location = shown(location)
    deadline, told = time.monotonic() + wait_s, False
    while True:
        with _reading_study(storage):
            try:
                attrs = optuna.load_study(study_name=study, storage=store).user_attrs
            except KeyError:  # no such study yet
                attrs = {}
        if "signature" in attrs:  # written after the run's settings: both are there
            if RUN_ATTR not in attrs:
                raise ConfigError(f"study {study!r} in {location} was not started by a compress run that "
                                  "search workers can join (no run settings in it)")
            return dict(attrs[RUN_ATTR])
        if time.monotonic() > deadline:
            raise ConfigError(f"no study {study!r} appeared in {location} within {wait_s:g} s; start the "
                              f"driving run with --storage {shown(storage)} --study {study}")
        if console is not None and not told:
            console.print(f"waiting for study {study!r} in {location} (a compress run with --storage and "
                          f"--study starts it)", soft_wrap=True)
            told = True
        time.sleep(0.5)


def join_search(storage: str, study: str, *, overrides: Mapping[str, Any] | None = None, wait_s: float = 600,
                progress: bool = True, console: Console | None = None) -> WorkerResult:
    """Wait for the study, then score its trials until it has all of them. `overrides` replace
    the driver's teacher, weights or data paths where they lie elsewhere on this machine."""
    started = time.monotonic()
    console = console or Console(stderr=True)
    shared = wait_for_study(storage, study, wait_s, console if progress else None)
    driver = {k: v for k, v in shared["config"].items() if k in _FIELDS and k not in _WORKER_OWN}
    values = {k: coerce(k, v, f"study {study!r}") for k, v in {**driver, **(overrides or {})}.items()
              if v is not None}
    cfg = resolve_config({}, {**values, "storage": storage, "study": study, "progress": progress})
    profile = load_profile(cfg.profile)
    data = load_data(cfg.data, seed=cfg.seed, image_size=cfg.image_size)
    teacher = load_teacher(cfg.teacher, data.x_val[:8], data.num_classes, arch=cfg.arch,
                           arch_kwargs=cfg.arch_kwargs, trust_pickle=cfg.trust_pickle,
                           input_shape=cfg.input_shape, weights=cfg.weights)
    predictor = _predictor(shared.get("predictor"), profile, teacher.spec.shape, cfg.calibration_models)
    budget = Budget(**shared["budget"])
    with Progress(enabled=progress, console=console) as bar, tempfile.TemporaryDirectory() as scratch:
        scored, finished = score_trials(teacher, data, latency_fn=predicted_latency(predictor, teacher.spec.shape),
                                        budget=budget, config=search_config(cfg, teacher, profile),
                                        storage=storage, run_dir=Path(scratch), progress=bar)
    return WorkerResult(study=study, storage=storage, scored=scored, finished=finished, n_trials=cfg.trials,
                        seconds=time.monotonic() - started)


def _predictor(stored: Mapping[str, Any] | None, profile: Any, shape: tuple[int, ...], n_models: int) -> Any:
    if stored:  # the driver's fitted cost model (and its correction on the teacher): the same predictions everywhere
        return predictor_from_dict(stored)
    return predictor_for(profile, shape, n_models=n_models)  # a datasheet roofline: the same everywhere
