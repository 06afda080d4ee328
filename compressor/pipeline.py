"""compress(config): the stage list, top to bottom.

    intake     load the profiles, the data and the teacher; open the run folder
    teacher    the teacher's accuracy and latency on every profile; resolve the budget
    anchor     the latency predictor corrected on a few timed students cut from the teacher (``nested`` only)
    search     students and their TA ranked without training (``nested`` only)
    premeasure the pick, the next-best candidates and the planned sizes timed untrained; re-selected on a miss
    distill    the nested family in one run (``nested``) or fixed widths (``skeleton``)
    export     ONNX (parity-checked), TorchScript, INT8, edge formats and TensorRT per size; accuracy; latency
    select     the most accurate size that fits (`pick.rank`), re-measured in a fresh process
    seal       ONNX metadata, then every file hashed once
    record     report, model cards, and the manifest last (its presence means "complete")
    track      with --mlflow, the finished run logged to MLflow (`tracking`; a failure loses nothing)

Each stage writes into the run folder and resumes from what is already there
(`--resume`): the search reopens its Optuna study, training reloads its last
epoch checkpoint. The rules stages apply live in the rooms below: latency
(measured or predicted) in `hardware.latency`, the budget rule in `budget`,
selection in `pick`, the manifest's shape in `record`, file writes in `files`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import random
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from rich.console import Console
from torch import nn

from . import prune as P
from .budget import Budget
from .config import CompressConfig
from .device import resolve_device
from .distill import DistillConfig, size_name, train_family
from .distill.checkpoint import load_checkpoint
from .distill.epochs import DEFAULT_EPOCHS, default_epochs, from_scratch
from .distill.single import KDConfig, distill_single
from .errors import (
    EXIT_BUDGET_NOT_MET,
    EXIT_OK,
    BackendUnavailableError,
    ConfigError,
    OutputError,
)
from .evaluate import accuracy, agreement, predict_logits
from .export import (
    build_tensorrt_engine,
    export_onnx,
    export_torchscript,
    onnx_metadata,
    onnx_predict,
    quantize_int8,
    set_onnx_metadata,
    tensorrt_available,
)
from .faults import crash_point
from .files import first_line, sha256_file, write_json, write_torch
from .follower import TrainingPlan, follow
from .hardware import (
    is_measurable,
    latency_report,
    load_profile,
    needs_calibration,
    predictor_for,
    quick_timing,
    remeasure_in_fresh_process,
    steadier,
)
from .hardware.backends import cpu_channel_block, cpu_model
from .hardware.isa import host_cpu_class
from .intake import load_teacher
from .intake.zoo import is_zoo_name
from .journal import Journal
from .manifest import MANIFEST_NAME, relative_path, write_manifest
from .pick import options_from, rank
from .anchor import Anchored, anchor_predictor
from .premeasure import Verified, plan_sizes, premeasure
from .progress import Progress
from .ranks import Ranks, from_env, peers_watched, process_group
from .record import (
    Int8Record,
    RunRecord,
    SizeRecord,
    TeacherRecord,
    Verification,
    size_from_dict,
    teacher_from_dict,
    to_manifest,
)
from .report import model_card_filename, print_summary, write_report
from .search import SearchConfig, run_search
from .search.study import shown
from .serving import write_serving_files
from .tasks.base import Task
from .types import DataSplits, HardwareProfile, LatencyReport, SearchResult, Teacher, to_jsonable

log = logging.getLogger(__name__)

# Shapes of results: the settings that, when changed, make a resumed run a different run.
_SHAPING = ("teacher", "data", "seed", "image_size", "method", "sizes", "epochs", "proxy", "spaces", "budget",
            "profile", "losses", "arch", "arch_kwargs", "weights", "verify_top", "anchor_students")
# Settings added after runs were first written: a run folder whose config.json lacks one was made
# with the value below (so a run started before they existed still resumes).
_SHAPING_SINCE = {"verify_top": 3, "anchor_students": 4}
# How many fitting sizes are re-measured, best first, before the run gives up on a verified pick.
_MAX_VERIFY = 3
# When no size fits at its first figure, the sizes that missed by less than this factor are timed again
# in fresh processes, best first: on a shared machine a slow spell (BENCHMARKS.md "Measurement
# stability": two states 1.8x apart for seconds at a time) can cover the whole export stage, and every
# size's figure then misses together (a ConvNeXt-atto family at 1/4: five sizes 1.25-1.38x over their
# figures timed untrained minutes before, the closest 4 % over the budget). The claim rule decides as for
# any size: two fresh figures that agree and fit.
_NEAR_MISS = 2.0
# Created exclusively (O_EXCL) when a new run takes its folder; it stays, marking the folder as used,
# and every run in the folder holds a lock on it (`run_folder`).
_CLAIM = ".compress-run"


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    manifest: dict  # exactly what manifest.json holds
    selected: str | None
    exit_code: int
    tracking: dict | None = None  # with --mlflow: {uri, experiment, run_id}, or {uri, error} if logging failed


@dataclass
class Servable:
    """One size on its way to export: the dense module and where it came from."""

    name: str
    ratio: Any
    module: nn.Module
    arch: Mapping[str, Any] | None = None


# ---------------------------------------------------------------------------- the run

def run(cfg: CompressConfig, console: Console | None = None) -> RunResult:
    """The run. Under torchrun (`ranks`), rank 0 runs it all and the other ranks only train the
    nested family with it (`follower`), waiting for rank 0 until then and after."""
    from .tasks import task_for

    ranks = from_env()
    task = task_for(cfg)  # image classification or causal language modelling: the task runs its stages
    with ExitStack() as held:  # the run folder stays locked until the run ends
        if ranks is not None:
            device = resolve_device(cfg.device, ranks.local_rank)
            held.enter_context(process_group(ranks, device))
            held.enter_context(peers_watched(ranks))
            if not ranks.is_main:
                run_dir = follow(cfg, ranks, device)
                return RunResult(run_dir or Path(cfg.out or "."), {}, None, EXIT_OK)
        result = task.compress(cfg, console or Console(stderr=True), held, ranks)
        if ranks is not None:
            ranks.broadcast(None)  # the run is over: so is every other rank's part in it
        return result


def run_classification(task: Task, cfg: CompressConfig, console: Console, held: ExitStack,
                       ranks: Ranks | None = None) -> RunResult:
    """The stages of a classification run (`tasks.image`): data, example inputs and the serving
    record come from `task`."""
    started, clock = time.monotonic(), _StageClock()
    with clock("intake"):
        profile = load_profile(cfg.profile)
        profiles = [profile, *(load_profile(p) for p in cfg.also_profile if p != profile.name)]
        _seed_everything(cfg.seed)
        data = task.load_data(cfg)
        teacher = load_teacher(cfg.teacher, task.example_inputs(data, 8), data.num_classes, arch=cfg.arch,
                               arch_kwargs=cfg.arch_kwargs,
                               trust_pickle=cfg.trust_pickle, input_shape=cfg.input_shape, weights=cfg.weights)
        run_dir = held.enter_context(run_folder(cfg))
        _check_resume_config(run_dir, cfg)
        journal = Journal(run_dir)
        clock.progress = progress = held.enter_context(Progress(enabled=cfg.progress, console=console,
                                                                  journal=journal, started=started))
    with clock("calibration"):  # once per machine and input shape, then cached
        for p in profiles:
            if needs_calibration(p, teacher.spec.shape):
                progress.log(f"calibrating the latency predictor for {p.name} (once per machine and input shape): "
                             f"timing {cfg.calibration_models} models")
        predictors = {p.name: predictor_for(p, teacher.spec.shape, n_models=cfg.calibration_models)
                      for p in profiles}
    with clock("teacher"):
        teacher_rec = stage_teacher(teacher, data, profiles, predictors, run_dir, resume=cfg.resume,
                                    journal=journal,
                                    steady_on=profile if cfg.budget_spec.factor is not None else None)
        budget = cfg.budget_spec.resolve(profile.name, profile.stat,
                                         _value(teacher_rec.latency.get(profile.name), profile))
    progress.log(f"[bold]compress[/] {cfg.teacher} -> {run_dir}  budget {budget.describe()}"
                 f"{'' if profile.measured else ' (predicted)'}")
    progress.log(f"teacher: {teacher_rec.params:,} params, accuracy {teacher_rec.accuracy:.3f}, "
                 f"{profile.stat} {_value(teacher_rec.latency.get(profile.name), profile):.3f} ms")
    search_info = training = None
    if cfg.method == "skeleton":
        with clock("distill"):
            servables = stage_skeleton(teacher, data, profile, predictors[profile.name], budget, cfg,
                                       run_dir, progress)
    else:
        with clock("anchor"):
            anchored = stage_anchor(teacher, data, profile, predictors[profile.name], teacher_rec, cfg, run_dir,
                                    progress)
        # the search, the size planning, the check before training and the sizes' predicted figures
        predictors = {**predictors, profile.name: anchored.predictor}
        with clock("search"):
            searched = stage_search(teacher, data, profile, predictors[profile.name], budget, teacher_rec, cfg,
                                    run_dir, progress)
        with clock("premeasure"):
            checked = stage_premeasure(searched, teacher, data, profile, predictors[profile.name], budget,
                                       teacher_rec, cfg, run_dir, progress)
        with clock("distill"):
            servables, search_info, training = stage_nested(checked.result, teacher, data, profile,
                                                            predictors[profile.name], budget, cfg, run_dir,
                                                            progress, ranks, sizes=checked.sizes,
                                                            teacher_accuracy=teacher_rec.accuracy)
        search_info["seconds"] = clock.seconds["search"]
        search_info["anchor"] = anchored.record
        search_info["verified"] = checked.record
    with clock("export"):
        sizes, reused = stage_export(servables, teacher, data, budget, profiles, predictors, cfg, run_dir,
                                     progress)
    with clock("select"):
        selected, verification, sizes = stage_select(sizes, budget, profile, teacher.spec.shape, run_dir,
                                                     progress)
    with clock("tensorrt"):
        sizes, trt = stage_tensorrt(sizes, cfg, run_dir)
    with clock("seal"):
        sizes = stage_seal(sizes, budget, teacher_rec, data, run_dir)
    record = RunRecord(config=cfg.to_dict(), budget=budget, teacher=teacher_rec, sizes=tuple(sizes),
                       serving=task.serving(data), task=task.record(), selected=selected, verification=tuple(verification), search=search_info,
                       training=training, tensorrt=trt, host=_host(profile), reused={"exports": reused},
                       stages=clock.seconds, seconds=clock.total())
    manifest = stage_record(record, run_dir)
    tracking = stage_track(cfg, run_dir, manifest, progress)
    print_summary(console, manifest, run_dir)
    return RunResult(run_dir, manifest, selected, EXIT_OK if selected else EXIT_BUDGET_NOT_MET, tracking)


# ---------------------------------------------------------------------------- intake

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def run_folder(cfg: CompressConfig) -> Iterator[Path]:
    """The run's output folder, held for as long as the run goes on.

    A new run takes a folder that is absent or empty; an existing finished or partial
    run is only continued by `--resume`. Either way the run holds an exclusive lock on
    the folder's claim file (`flock`, released by the kernel when the process ends,
    however it ends), so a second run into the same folder, new or resumed, is refused
    in one line instead of writing over the first. A resumed run then clears the
    temporary files a killed run left (`files.atomic_output`'s ``.tmp-*``).
    """
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = Path(cfg.teacher.rpartition(":")[2] if is_zoo_name(cfg.teacher) else cfg.teacher).stem
        run_dir = Path("runs") / f"{stamp}-{name}"
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputError(f"output {run_dir} exists and is not a folder")
        if run_dir.exists() and any(run_dir.iterdir()) and not cfg.resume:
            what = "a finished run" if (run_dir / MANIFEST_NAME).exists() else "a partial run"
            raise OutputError(f"output folder {run_dir} already holds {what}; pass --resume to continue it "
                              "or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        # of two new runs racing for one --out, exactly one creates the claim (O_EXCL)
        flags = os.O_CREAT | os.O_WRONLY | (0 if cfg.resume else os.O_EXCL)
        try:
            fd = os.open(run_dir / _CLAIM, flags, 0o644)
        except FileExistsError:
            raise OutputError(f"output folder {run_dir} was just taken by another compress run; "
                              "choose another --out") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL inside the path
        raise OutputError(f"cannot write to output folder {run_dir}: {getattr(e, 'strerror', None) or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"output folder {run_dir} is in use by another compress run; wait for it to end "
                              "(or stop it), then --resume") from None
        if cfg.resume:
            _clear_torn_writes(run_dir)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def _clear_torn_writes(run_dir: Path) -> None:
    """Temporary files of writes a killed run never renamed into place: never read, so removed."""
    for tmp in run_dir.rglob(".tmp-*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def _check_resume_config(run_dir: Path, cfg: CompressConfig) -> None:
    """A resumed run must be the same run: the choices that shape results must match."""
    saved = run_dir / "config.json"
    current = cfg.to_dict()
    if saved.exists():
        try:
            old = json.loads(saved.read_text())
            if not isinstance(old, dict):
                raise ValueError(f"holds a JSON {type(old).__name__}, not the run's settings")
        except (OSError, ValueError) as e:  # ValueError: bad JSON, and garbled bytes that are not UTF-8
            raise ConfigError(f"cannot resume {run_dir}: {saved} is unreadable ({first_line(e)}); "
                              f"start a new run with another --out") from None
        changed = [k for k in _SHAPING if json.dumps(old.get(k, _SHAPING_SINCE.get(k))) != json.dumps(current.get(k))]
        if changed:
            raise ConfigError(f"cannot resume {run_dir}: {', '.join(changed)} changed since the run started "
                              f"(was {', '.join(f'{k}={old.get(k)!r}' for k in changed)})")
    write_json(saved, current)


# ---------------------------------------------------------------------------- teacher

_TEACHER_RECORD = "teacher.json"


def stage_teacher(teacher: Teacher, data: DataSplits, profiles: list[HardwareProfile],
                  predictors: Mapping[str, Any], run_dir: Path, resume: bool = False,
                  journal: Journal | None = None, steady_on: HardwareProfile | None = None) -> TeacherRecord:
    """Accuracy, size and latency of the teacher, kept in `teacher.json`.

    On `steady_on` (the profile of a relative budget) the latency is the lower of two
    measurements, the second in a fresh process (`hardware.steadier`): the budget is a
    fraction of that one figure. A resumed run reuses the record of the same teacher file:
    measuring again would give a slightly different latency, hence another relative budget
    (`--budget 0.5x`) than the one the finished search and sizes were judged against."""
    saved = _finished_teacher(run_dir, teacher, profiles) if resume else None
    if saved is not None:
        return saved
    record = _measure_teacher(teacher, data, profiles, predictors, run_dir, steady_on)
    onnx = run_dir / "teacher.onnx"
    write_json(run_dir / _TEACHER_RECORD, {**to_jsonable(record),
                                           "onnx_sha256": sha256_file(onnx) if onnx.is_file() else None})
    (journal or Journal(None)).done("teacher", teacher.sha256[:12])
    return record


def _finished_teacher(run_dir: Path, teacher: Teacher, profiles: list[HardwareProfile]) -> TeacherRecord | None:
    """The saved record when it is of this teacher file and covers every profile; else None (measure)."""
    try:
        saved = json.loads((run_dir / _TEACHER_RECORD).read_text())
        record = teacher_from_dict(saved)
        onnx = run_dir / "teacher.onnx"
        onnx_intact = saved["onnx_sha256"] == (sha256_file(onnx) if onnx.is_file() else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent or damaged: measured again
        return None
    if not onnx_intact or record.sha256 != teacher.sha256 or any(p.name not in record.latency for p in profiles):
        return None
    return record


def _measure_teacher(teacher: Teacher, data: DataSplits, profiles: list[HardwareProfile],
                     predictors: Mapping[str, Any], run_dir: Path,
                     steady_on: HardwareProfile | None = None) -> TeacherRecord:
    """Accuracy, size and latency of the teacher (measured via its ONNX export where possible)."""
    logits = predict_logits(teacher.module, data.x_val)
    onnx_path = None
    try:
        onnx_path = export_onnx(teacher.module, data.x_val[:16], run_dir / "teacher.onnx", slim=False).path
    except Exception as e:  # noqa: BLE001 - an unexportable teacher is still a teacher; predict instead
        log.warning("teacher could not be exported to ONNX (%s); its latency is predicted", first_line(e))
    latency: dict[str, LatencyReport] = {}
    for prof in profiles:
        module = teacher.module if teacher.prunable else None
        try:
            latency[prof.name] = latency_report(prof, teacher.spec.shape, onnx_path=onnx_path, module=module,
                                                predictor=predictors[prof.name])
        except (BackendUnavailableError, ValueError) as e:
            log.warning("no teacher latency on %s: %s", prof.name, first_line(e))
    if steady_on is not None and onnx_path is not None and steady_on.name in latency:
        latency[steady_on.name] = steadier(latency[steady_on.name], onnx_path, steady_on, teacher.spec.shape)
    return TeacherRecord(path=teacher.source, sha256=teacher.sha256, format=teacher.format,
                         prunable=teacher.prunable, input_shape=tuple(teacher.spec.shape),
                         num_classes=teacher.spec.num_classes, params=P.count_params(teacher.module),
                         macs=_macs(teacher.module, data.x_val[:1]), accuracy=accuracy(logits, data.y_val),
                         latency=latency)


def _value(report: LatencyReport | None, profile: HardwareProfile) -> float:
    return report.value(profile.stat) if report is not None else float("nan")


def _macs(module: nn.Module, example: torch.Tensor) -> int:
    try:
        return P.count_macs(module, example)
    except Exception:  # noqa: BLE001 - a non-prunable (script) teacher cannot be traced for MACs
        return 0


# ---------------------------------------------------------------------------- students

def stage_skeleton(teacher: Teacher, data: DataSplits, profile: HardwareProfile, predictor: Any, budget: Budget,
                   cfg: CompressConfig, run_dir: Path, progress: Progress) -> list[Servable]:
    """Fixed width ratios of the teacher (Torch-Pruning); the widest that fits is distilled."""
    if not teacher.prunable:
        raise ConfigError("the skeleton method needs a prunable teacher; use --method nested (family students)")
    example = data.x_train[:2]
    groups = P.channel_groups(teacher.module, example)
    order = P.importance_order(teacher.module, example, groups)
    ratios = sorted(set(cfg.sizes or (0.75, 0.5, 0.375, 0.25)), reverse=True)
    cand_dir = run_dir / "candidates"
    fits = []
    task = progress.add("measure candidates", total=len(ratios))
    for r in ratios:
        module = P.materialize(teacher.module, example, groups, r, order, profile.round_to)
        onnx = export_onnx(module, data.x_val[:8], cand_dir / f"{size_name(r)}.onnx", slim=False) \
            if is_measurable(profile) else None
        lat = latency_report(profile, teacher.spec.shape, onnx_path=onnx.path if onnx else None, module=module,
                             predictor=predictor)
        progress.advance(task)
        progress.log(f"  width {r:.3f}: {P.count_macs(module, data.x_val[:1]) / 1e6:.1f} MMACs, "
                     f"{profile.stat} {lat.value():.3f} ms{'' if lat.measured else ' (predicted)'}")
        if budget.fits(lat):
            fits.append((r, module))
    r, student = fits[0] if fits else (ratios[-1], P.materialize(teacher.module, example, groups, ratios[-1],
                                                                 order, profile.round_to))
    ckpt = run_dir / "student.pt"
    if cfg.resume and ckpt.exists():
        student.load_state_dict(load_checkpoint(ckpt))  # tensors only: a planted pickle is refused
    else:
        kd = KDConfig(epochs=cfg.epochs or DEFAULT_EPOCHS, batch_size=cfg.batch_size, seed=cfg.seed,
                      precision=cfg.train_precision)
        distill_single(student, teacher.module, data, kd, progress,
                       label=f"distil {size_name(r)}", device=resolve_device(cfg.device))
        write_torch(ckpt, student.state_dict())
    return [Servable(name=size_name(r), ratio=r, module=student.eval())]


def predicted_latency(predictor: Any, shape: tuple[int, ...]) -> Callable[[nn.Module], float]:
    """What the search judges candidates on: the profile's predicted latency of a built network, in ms."""
    def latency_fn(m: nn.Module) -> float:
        return predictor.predict_ms(m, shape)
    return latency_fn


def search_config(cfg: CompressConfig, teacher: Teacher, profile: HardwareProfile) -> SearchConfig:
    """The study's settings for this run (the same in a driving run and in `compress search-worker`)."""
    spaces = tuple(s for s in cfg.spaces if s != "teacher_scaled" or teacher.prunable)
    if not spaces:
        raise ConfigError("the teacher cannot be pruned, so the teacher_scaled space is out; add another space "
                          "with --spaces (e.g. --spaces cnn)")
    return SearchConfig(spaces=spaces, proxy=cfg.proxy, n_trials=cfg.trials, sampler=cfg.sampler, seed=cfg.seed,
                        round_to=profile.round_to, study_name=cfg.study, device=cfg.device)


def stage_anchor(teacher: Teacher, data: DataSplits, profile: HardwareProfile, predictor: Any,
                 teacher_rec: TeacherRecord, cfg: CompressConfig, run_dir: Path, progress: Progress) -> Anchored:
    """The host predictor corrected on the teacher's own operator mix (`anchor`): a few students cut
    from the teacher, timed untrained, and the teacher's measured latency."""
    return anchor_predictor(teacher, predictor, data.x_train[:2], profile=profile,
                            teacher_latency=teacher_rec.latency.get(profile.name),
                            spaces=cfg.spaces,
                            students=cfg.anchor_students, round_to=profile.round_to, search_dir=run_dir / "search",
                            resume=cfg.resume, progress=progress)


def stage_search(teacher: Teacher, data: DataSplits, profile: HardwareProfile, predictor: Any, budget: Budget,
                 teacher_rec: TeacherRecord, cfg: CompressConfig, run_dir: Path,
                 progress: Progress) -> SearchResult:
    """Search a student under the budget, and the TA it nests in, without training either."""
    latency_fn = predicted_latency(predictor, teacher.spec.shape)
    teacher_lat = teacher_rec.latency.get(profile.name)
    return run_search(teacher, data, latency_fn=latency_fn, budget=budget,
                      teacher_latency_ms=teacher_lat.value() if teacher_lat else float("inf"),
                      config=search_config(cfg, teacher, profile), run_dir=run_dir / "search",
                      storage=cfg.storage, resume=cfg.resume, progress=progress,
                      shared={"config": cfg.to_dict(), "budget": dataclasses.asdict(budget),
                              "predictor": predictor.to_dict() if hasattr(predictor, "to_dict") else None})


def stage_premeasure(result: SearchResult, teacher: Teacher, data: DataSplits, profile: HardwareProfile,
                     predictor: Any, budget: Budget, teacher_rec: TeacherRecord, cfg: CompressConfig, run_dir: Path,
                     progress: Progress) -> Verified:
    """The search's pick and the TA's planned sizes measured untrained before distillation
    (`premeasure`); a pick whose measurement misses the budget is replaced there."""
    teacher_lat = teacher_rec.latency.get(profile.name)
    scfg = search_config(cfg, teacher, profile)
    return premeasure(result, teacher, data.x_train[:2], profile=profile,
                      latency_fn=predicted_latency(predictor, teacher.spec.shape), budget=budget, top=cfg.verify_top,
                      teacher_latency_ms=teacher_lat.value() if teacher_lat else float("inf"),
                      round_to=profile.round_to, ta_factors=scfg.ta_factors, ta_reach=scfg.ta_reach,
                      fixed_sizes=cfg.sizes,
                      search_dir=run_dir / "search", resume=cfg.resume, progress=progress)


def stage_nested(result: SearchResult, teacher: Teacher, data: DataSplits, profile: HardwareProfile,
                 predictor: Any, budget: Budget, cfg: CompressConfig, run_dir: Path, progress: Progress,
                 ranks: Ranks | None = None, sizes: list[tuple[str, Any]] | None = None,
                 teacher_accuracy: float | None = None) -> tuple[list[Servable], dict[str, Any], dict[str, Any]]:
    """Widen the searched student into its TA and train the nested family in one run
    (under torchrun, with every other rank: `ranks` is rank 0's place). `sizes`: as planned and
    measured before training (`stage_premeasure`); None plans them here from the predictor.
    `teacher_accuracy` (on the validation split): a cut family left behind it is told of more epochs."""
    latency_fn = predicted_latency(predictor, teacher.spec.shape)
    _seed_everything(cfg.seed)
    nest = plan_sizes(result.ta.arch, teacher, data.x_train[:2], latency_fn, budget.ms, profile.round_to,
                      cfg.sizes, sizes=sizes)
    ta, groups, order, sizes = nest.ta, nest.groups, nest.order, nest.sizes
    epochs, why = default_epochs(cfg.epochs, result.ta.arch)
    if cfg.epochs is None:
        log.info("distillation: %d epochs (%s)", epochs, why)
    dcfg = DistillConfig(epochs=epochs, batch_size=cfg.batch_size, seed=cfg.seed, round_to=profile.round_to,
                         extra_losses=cfg.loss_weights, schedule=cfg.schedule, precision=cfg.train_precision,
                         stop_on_plateau=cfg.early_stop,
                         **_recipe(result.ta.arch, ta))
    device = resolve_device(cfg.device, ranks.local_rank if ranks else None)
    if ranks is not None:  # the other ranks build the same TA and train it with this one
        ranks.broadcast(TrainingPlan(ta_arch=dict(result.ta.arch), sizes=tuple(sizes), order=order, config=dcfg,
                                     run_dir=str(run_dir)))
    family = train_family(teacher.module, ta, data, sizes=sizes, config=dcfg, run_dir=run_dir / "family",
                          resume=cfg.resume, progress=progress, groups=groups, order=order, device=device,
                          ranks=ranks)
    servables = [Servable(name=n, ratio=family.ratios[n], module=m.eval(), arch=result.ta.arch)
                 for n, m in family.models.items()]
    search_info = {
        "storage": shown(result.storage), "study_name": result.study_name, "n_trials": result.n_trials,
        "n_failed": result.n_failed, "proxy": cfg.proxy, "feasible": result.feasible,
        "student": _candidate_json(result.student), "ta": _candidate_json(result.ta),
        "pareto": [_candidate_json(c) for c in result.pareto],
    }
    training = {"history": family.history, "train_seconds": family.train_seconds,
                "sizes": {n: family.ratios[n] for n in family.models},
                "family_weights": relative_path(run_dir, family.family.weights_path),
                "losses": [{"name": n, "weight": w} for n, w in cfg.loss_weights],
                "epochs": epochs, "epochs_why": why,
                "device": device.type, "ranks": ranks.world_size if ranks else 1, "schedule": dcfg.schedule,
                "precision": family.precision, "rollbacks": family.rollbacks}
    if family.precision_fallback_epoch is not None:
        training["precision_fallback_epoch"] = family.precision_fallback_epoch
    if family.stopped_early is not None:
        training["stopped_early"] = family.stopped_early
    hint = behind_teacher_hint(family.val_acc, teacher_accuracy, len(data.y_val), epochs, cfg.epochs, result.ta.arch)
    if hint is not None:
        training["behind_teacher"] = hint
        progress.log(f"[yellow]{hint}[/]")
    return servables, search_info, training


def behind_teacher_hint(val_acc: Mapping[str, float], teacher_accuracy: float | None, n_val: int, epochs: int,
                        requested: int | None, arch: Mapping[str, Any]) -> str | None:
    """A line for the user where a family cut from the teacher ends its default epochs more than one
    validation sample behind the teacher: such cuts of zoo teachers were still learning at 12 epochs and
    gained 0.65 points over their sizes on average with `--epochs 24` (the demo's lost 0.3-0.5 planned for
    24, so 12 stays the default: `distill/epochs.py`). None where nothing is to be said."""
    if requested is not None or from_scratch(arch) or teacher_accuracy is None or not val_acc:
        return None
    mean = sum(val_acc.values()) / len(val_acc)
    if mean >= teacher_accuracy - 1.0 / max(1, n_val) - 1e-9:  # within one validation sample, or above
        return None
    return (f"the sizes end {100 * (teacher_accuracy - mean):.1f} points behind the teacher on average after "
            f"{epochs} epochs ({100 * mean:.1f} % against {100 * teacher_accuracy:.1f} %); families cut from "
            f"zoo teachers gained 0.2-1.3 points (0.65 on average) with --epochs 24")


def _recipe(arch: Mapping[str, Any], ta: nn.Module | None = None) -> dict[str, Any]:
    """Nested training needs a higher learning rate than single-model KD: every size shares
    the steps. lr 1e-2, tau 1-2 and +-2 shifts were best for CNN TAs on digits and mnist1d
    (benchmarks/results/nested.md).

    Transformer TAs keep DistillConfig's defaults (lr 3e-3, tau 4, no augmentation): measured
    against five other recipes at compress's 12 epochs, 3 seeds (benchmarks/results/
    nested_transformer.md), they had the best mean accuracy over four nested sizes and both data
    sets, 89.9 % (digits 96.2, mnist1d 83.6); the CNN recipe reached 88.3 % (digits 92.9: shifts
    cost a patch-embedding transformer 2.5-3.5 points there), tau 2 alone 89.6 %, lr 1e-3 82.0 %.
    A TA cut from an attention teacher (a ViT's teacher_scaled TA) is a transformer too: `ta`
    is looked at for attention, since its arch names no family."""
    if arch.get("family") == "transformer" or (ta is not None and P.has_attention(ta)):
        return {}
    return {"lr": 1e-2, "temperature": 2.0, "augment": "shift"}


def _candidate_json(c) -> dict[str, Any]:
    return {"arch": dict(c.arch), "proxy_scores": dict(c.proxy_scores), "est_latency_ms": c.est_latency_ms,
            "trial_number": c.trial_number, "params": c.params, "macs": c.macs}


# ---------------------------------------------------------------------------- export

def stage_export(servables: list[Servable], teacher: Teacher, data: DataSplits, budget: Budget,
                 profiles: list[HardwareProfile], predictors: Mapping[str, Any], cfg: CompressConfig,
                 run_dir: Path, progress: Progress) -> tuple[list[SizeRecord], list[str]]:
    """ONNX (+ parity), TorchScript, optional INT8 and edge formats (`--formats`) per size; accuracy;
    latency on every profile.

    On `--resume`, a size whose export record and files are intact is reused as it is
    (its names are returned second)."""
    teacher_logits = predict_logits(teacher.module, data.x_val)
    out, reused = [], []
    task = progress.add("export + measure sizes", total=len(servables))
    for s in servables:
        folder = run_dir / "models" / s.name
        done = _finished_export(folder, run_dir, profiles, cfg) if cfg.resume else None
        if done is not None:
            out.append(dataclasses.replace(done, meets_budget=budget.fits(done.latency[budget.profile])))
            reused.append(s.name)
            progress.advance(task)
            continue
        onnx = export_onnx(s.module, data.x_val[:64], folder / "model.onnx")
        files = {"onnx": relative_path(run_dir, onnx.path)}
        notes = list(onnx.notes)
        try:
            files["torchscript"] = relative_path(run_dir, export_torchscript(s.module, data.x_val[:2],
                                                                              folder / "model.ts.pt"))
        except Exception as e:  # noqa: BLE001 - serving from ONNX still works; say why the PyTorch file is missing
            notes.append(f"TorchScript export failed: {first_line(e)}")
        logits = torch.from_numpy(onnx_predict(onnx.path, data.x_val))
        latency = {p.name: latency_report(p, teacher.spec.shape, onnx_path=onnx.path, module=s.module,
                                          predictor=predictors[p.name], budget=budget if p.name == budget.profile
                                          else None)
                   for p in profiles}
        size = SizeRecord(name=s.name, ratio=s.ratio, params=P.count_params(s.module),
                          macs=_macs(s.module, data.x_val[:1]), accuracy=accuracy(logits, data.y_val),
                          teacher_agreement=agreement(logits, teacher_logits), onnx_max_abs_diff=onnx.max_abs_diff,
                          parity_ok=onnx.parity_ok, opset=onnx.opset, latency=latency, files=files,
                          arch=s.arch, notes=tuple(notes))
        size = dataclasses.replace(size, meets_budget=budget.fits(latency[budget.profile]))
        if cfg.int8:
            size = _with_int8(size, onnx.path, logits, data, profiles, budget, teacher.spec.shape, run_dir)
        if set(cfg.formats) - {"onnx"}:
            size = _with_formats(size, s.module, onnx.path, data, profiles, teacher.spec.shape, cfg, run_dir, progress)
        out.append(_record_export(size, folder, run_dir))
        progress.advance(task)
        progress.done("export", s.name, total=len(servables))
    return out, reused


_EXPORT_RECORD = "size.json"


def _record_export(size: SizeRecord, folder: Path, run_dir: Path) -> SizeRecord:
    """Hash the size's files and write its record beside them: a resumed run reuses this export
    only while every file still has the hash recorded here (`_finished_export`)."""
    size = dataclasses.replace(size, sha256={role: sha256_file(run_dir / p) for role, p in size.files.items()})
    write_json(folder / _EXPORT_RECORD, to_jsonable(size))
    return size


def _finished_export(folder: Path, run_dir: Path, profiles: list[HardwareProfile],
                     cfg: CompressConfig) -> SizeRecord | None:
    """A size exported and measured by the run being resumed, or None when anything about it is
    missing, unreadable, different from what this run asks for, or changed on disk since."""
    try:
        size = size_from_dict(json.loads((folder / _EXPORT_RECORD).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # never exported, or the record is damaged: export again
    wanted = {p.name for p in profiles}
    if set(size.latency) != wanted or (size.int8 is not None) != cfg.int8 or \
            set(size.formats) != set(cfg.formats) - {"onnx"}:
        return None
    for role, path in size.files.items():
        file = run_dir / path
        if not file.is_file() or sha256_file(file) != size.sha256.get(role):
            log.warning("%s changed since it was exported; exporting %s again", file, size.name)
            return None
    return size


def _with_int8(size: SizeRecord, onnx_path: Path, fp32_logits: torch.Tensor, data: DataSplits,
               profiles: list[HardwareProfile], budget: Budget, shape: tuple[int, ...], run_dir: Path) -> SizeRecord:
    """An INT8 copy quantized for the CPU of the budget's profile, judged against its fp32 model."""
    from .export.quantize import int8_settings_for

    target = next(p for p in profiles if p.name == budget.profile)
    settings = int8_settings_for(_cpu_class(target))
    q = quantize_int8(onnx_path, data.x_train[:256], onnx_path.with_name("model.int8.onnx"), settings=settings)
    crash_point("int8")
    q_logits = torch.from_numpy(onnx_predict(q, data.x_val))
    latency = {p.name: _int8_latency(p, size.latency.get(p.name), shape, q) for p in profiles
               if p.backend == "onnxruntime-cpu" and is_measurable(p)}
    fp32, int8 = size.latency[budget.profile], latency.get(budget.profile)
    speedup = fp32.value() / int8.value() if int8 is not None and int8.value() > 0 else None
    if speedup is None:
        note = f"not measured on {budget.profile}: INT8 speed there is unknown"
    elif speedup <= 1.0:
        note = f"INT8 is not faster than fp32 on {budget.profile} ({speedup:.2f}x); serve the fp32 model"
        if "timing" in int8.env:
            note += " (timed briefly: clearly slower, so not timed in full)"
    else:
        note = f"INT8 is {speedup:.2f}x faster than fp32 on {budget.profile}"
    record = Int8Record(file=relative_path(run_dir, q), accuracy=accuracy(q_logits, data.y_val),
                        agreement_with_fp32=agreement(q_logits, fp32_logits),
                        settings=dataclasses.asdict(settings), latency=latency, speedup=speedup, note=note)
    return dataclasses.replace(size, int8=record, files={**size.files, "onnx_int8": record.file})


def _int8_latency(profile: HardwareProfile, fp32: LatencyReport | None, shape: tuple[int, ...],
                  path: Path) -> LatencyReport:
    """The INT8 file timed on `profile`, first under the quick timing (`hardware.quick_timing`). Where
    that already shows it slower than its fp32 model beyond both figures' spreads, the quick figure
    stands, marked in its `env`: the file will not be served, and the profile's full timing (0.7 s a
    file on the example; 4 of its 5 sizes are slower in INT8 on an AVX-512 host) would only confirm it.
    Otherwise it is timed as every served model is."""
    quick = latency_report(quick_timing(profile), shape, onnx_path=path)
    if fp32 is not None and fp32.measured and \
            quick.value() - quick.spread_ms > fp32.value() + fp32.spread_ms:
        return dataclasses.replace(quick, env={**quick.env, "timing": "quick: slower than fp32, not timed in full"})
    return latency_report(profile, shape, onnx_path=path)


def _with_formats(size: SizeRecord, module: nn.Module, onnx_path: Path, data: DataSplits,
                  profiles: list[HardwareProfile], shape: tuple[int, ...], cfg: CompressConfig, run_dir: Path,
                  progress: Progress) -> SizeRecord:
    """The size in each requested edge format beside its ONNX file (`export.formats`), parity-checked on
    the ONNX check's inputs and timed under the run's host CPU profile; one that cannot be made says why."""
    from rich.markup import escape

    from .export.formats import export_formats, format_timing_profile
    from .record import FormatRecord

    made = export_formats(cfg.formats, module, onnx_path, data.x_val[:64], format_timing_profile(profiles), shape)
    records, files = {}, dict(size.files)
    for name, f in made.items():
        rel = {role: relative_path(run_dir, p) for role, p in f.files.items()}
        files.update(rel)
        records[name] = FormatRecord(
            format=name, ok=f.ok, file=rel.get(name), runtime=f.runtime, reason=f.reason, notes=f.notes,
            max_abs_diff=f.parity.max_abs_diff if f.parity else None,
            argmax_agreement=f.parity.argmax_agreement if f.parity else None,
            parity_samples=f.parity.samples if f.parity else 0, atol=f.parity.atol if f.parity else None,
            latency=f.latency)
        if not f.ok:  # reasons quote runtimes' own log lines, brackets and all: escaped, not read as markup
            what = "flagged" if f.produced else "not produced"
            progress.log(f"[yellow]{escape(f'{size.name}: {name} {what}: {f.reason}')}[/]")
    return dataclasses.replace(size, formats=records, files=files)


def _cpu_class(profile: HardwareProfile) -> str:
    """The instruction-set class INT8 is tuned for: this host's where the profile is measured here."""
    if profile.measured and profile.backend in ("onnxruntime-cpu", "openvino-cpu"):
        return host_cpu_class()
    return profile.isa or "unknown"


def stage_tensorrt(sizes: list[SizeRecord], cfg: CompressConfig,
                   run_dir: Path) -> tuple[list[SizeRecord], dict[str, Any]]:
    """TensorRT engines where asked for and possible; otherwise the reason, in the manifest."""
    available, reason = tensorrt_available()
    info: dict[str, Any] = {"requested": cfg.tensorrt, "available": available, "reason": reason}
    if not cfg.tensorrt:
        return sizes, info
    if not available:
        log.warning("--tensorrt: %s; no engines built", reason)
        return sizes, info
    out = []
    for s in sizes:
        onnx = run_dir / s.files["onnx"]
        engine = build_tensorrt_engine(onnx, onnx.with_name("model.fp16.engine"), fp16=True)
        out.append(dataclasses.replace(s, files={**s.files, "tensorrt": relative_path(run_dir, engine)}))
    return out, info


# ---------------------------------------------------------------------------- select

class Selection(NamedTuple):
    """What `stage_select` decided: the selected size's name (None: none holds), every claim checked,
    and the sizes, a near miss that was claimed carrying its claim's figure (`_NEAR_MISS`)."""
    selected: str | None
    verification: list[Verification]
    sizes: list[SizeRecord]


def stage_select(sizes: list[SizeRecord], budget: Budget, profile: HardwareProfile, shape: tuple[int, ...],
                 run_dir: Path, progress: Progress) -> Selection:
    """The most accurate size that fits (`pick.rank`), and its claim checked by a second measurement.

    On a profile measured here, the chosen size is timed again in a fresh process
    after every other measurement; the claim holds when that second figure, with the
    larger of its own spread and its distance from the first as its spread, still
    fits (`LatencyReport.confirmed_by`), or, when it does not, a third fresh-process
    figure agrees with either earlier one and fits the same way (`Budget.claim`). If not, the
    next-best fitting size is tried (up to `_MAX_VERIFY`), and a size that fails
    its re-measurement is not selected. When no size fits at its first figure, those within
    `_NEAR_MISS` of the budget are tried the same way, best first; one whose fresh figures make the
    claim is selected and recorded with the claim's figure. Predicted profiles have nothing to re-measure.
    """
    options = options_from(sizes, budget.profile)
    ranked = rank(options, budget)
    measurable = is_measurable(profile) and profile.backend != "torch-cuda"
    if not measurable:
        return Selection(ranked[0].name if ranked else None, [], sizes)
    near = False
    if not ranked:
        ranked = rank(options, dataclasses.replace(budget, ms=budget.ms * _NEAR_MISS))
        near = bool(ranked)
        if near:
            progress.log(f"[yellow]no size fits the {budget.ms:.3f} ms budget at its first measurement; timing "
                         f"{', '.join(o.name for o in ranked[:_MAX_VERIFY])} again in fresh processes (within "
                         f"{_NEAR_MISS:g}x of it: a slow spell of the machine can slow every size at once)[/]")
    by_name = {s.name: s for s in sizes}
    checks: list[Verification] = []
    for option in ranked[:_MAX_VERIFY]:
        size = by_name[option.name]
        first = size.latency[budget.profile]
        onnx = run_dir / size.files["onnx"]
        second = remeasure_in_fresh_process(onnx, profile, shape)
        # the claim holds when the second figure fits with the two measurements' disagreement as its spread;
        # when it does not, a third measurement pairs with either (`Budget.claim`)
        third = None if budget.fits(budget.claim(first, second)) else remeasure_in_fresh_process(onnx, profile, shape)
        claim = budget.claim(first, second, third)
        check = Verification(size=size.name, first=first, second=second, third=third, holds=budget.fits(claim),
                             after_miss=near)
        checks.append(check)
        if check.holds:
            if near:  # its recorded figure is the claim's, so the manifest, the report and `pick` agree
                sizes = [dataclasses.replace(s, latency={**s.latency, budget.profile: claim}, meets_budget=True)
                         if s.name == size.name else s for s in sizes]
            return Selection(size.name, checks, sizes)
        taken = f"{second.value():.3f} and {third.value():.3f}" if third is not None else f"{second.value():.3f}"
        progress.log(f"[yellow]{size.name} re-measured in a fresh process at {profile.stat} {taken} ms "
                     f"(first {check.first.value():.3f} ms) misses the {budget.ms:.3f} ms budget; "
                     f"trying the next size[/]")
    return Selection(None, checks, sizes)


# ---------------------------------------------------------------------------- seal + record

def stage_seal(sizes: list[SizeRecord], budget: Budget, teacher: TeacherRecord, data: DataSplits,
               run_dir: Path) -> list[SizeRecord]:
    """Write each ONNX file's metadata and what a server needs beside it (preprocessing, class
    names, `serve.py`), name its model card, then hash every file once."""
    out = []
    names = list(data.class_names) or [str(i) for i in range(data.num_classes)]
    for s in sizes:
        folder = run_dir / Path(s.files["onnx"]).parent
        set_onnx_metadata(run_dir / s.files["onnx"], onnx_metadata(
            name=s.name, ratio=s.ratio, accuracy=s.accuracy, teacher_agreement=s.teacher_agreement,
            latency=s.latency, budget=budget.describe(), teacher_sha256=teacher.sha256,
            preprocess=dict(data.preprocess), classes=names))
        serving = write_serving_files(folder, data.preprocess, names, data.num_classes)
        files = {**s.files, **{role: relative_path(run_dir, p) for role, p in serving.items()}}
        # the metadata changed the ONNX file: hash again, and keep the export record in step
        sealed = _record_export(dataclasses.replace(s, files=files), folder, run_dir)
        out.append(dataclasses.replace(sealed, files={**files, "model_card": model_card_filename(s.name)}))
    return out


def stage_record(record: RunRecord, run_dir: Path) -> dict[str, Any]:
    """Report and model cards first; the manifest last, so its presence means 'complete'."""
    manifest = to_manifest(record)
    write_report(run_dir, manifest)
    crash_point("report")
    write_manifest(run_dir, manifest)
    return manifest


def stage_track(cfg: CompressConfig, run_dir: Path, manifest: dict[str, Any],
                progress: Progress) -> dict[str, str] | None:
    """Log the finished run to MLflow (`--mlflow`), after the manifest: the run folder is complete
    whatever MLflow does, so a failure is an error line naming the command that logs the run later,
    and the exit code stays the budget's (0 or 3), which is what scripts branch on."""
    if not cfg.mlflow:
        return None
    from .tracking import TrackingError, log_run

    try:
        info = log_run(cfg.mlflow, run_dir, manifest)
    except TrackingError as e:
        log.error("%s. The run's results are complete in %s; log them later with: compress report %s --mlflow %s",
                  e, run_dir, run_dir, cfg.mlflow)
        return {"uri": cfg.mlflow, "error": str(e)}
    progress.log(f"logged to MLflow: run {info['run_id']} in experiment {info['experiment']!r} ({cfg.mlflow})")
    return info


def _host(profile: HardwareProfile) -> dict[str, Any]:
    """What this machine's CPU decided: INT8 settings (its class) and channel rounding (its block)."""
    return {"cpu_model": cpu_model(), "cpu_class": host_cpu_class(), "channel_block": cpu_channel_block(),
            "round_to": profile.round_to}


class _StageClock:
    """Wall seconds per stage, for the manifest: the slow stage is visible in every run.
    Each finished stage is also a unit of progress (and a line in the run's journal)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = Progress(enabled=False)  # until the run folder exists: a journal without a file
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
        self.progress.done("stage", stage, seconds=self.seconds[stage])  # not reached when the stage raised

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)
