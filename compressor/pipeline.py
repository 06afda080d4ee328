"""compress(config): load -> search -> distil -> export -> profile -> select -> manifest.

Stages are plain functions called in order. Each writes into the run folder
and resumes from what is already there (`--resume`): the search reopens its
Optuna study, training reloads its last epoch checkpoint, and export skips
sizes whose files and figures are complete. The manifest is written last and
atomically, so a folder with `manifest.json` is a finished run.
"""
from __future__ import annotations

import json
import logging
import platform
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from . import __version__
from . import prune as P
from .config import CompressConfig, parse_budget
from .data import load_data
from .errors import EXIT_BUDGET_NOT_MET, EXIT_OK, ConfigError, OutputError
from .evaluate import accuracy, agreement, predict_logits
from .manifest import MANIFEST_NAME, write_json_atomic, write_manifest
from .progress import Progress
from .teacher import load_teacher
from .types import Budget, DataSplits, HardwareProfile, LatencyReport, Teacher, to_jsonable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    manifest: dict
    selected: str | None
    exit_code: int


@dataclass
class Servable:
    """One size on its way to the manifest: the dense module and its figures."""

    name: str
    ratio: Any
    module: nn.Module
    arch: Mapping[str, Any] | None = None


# ---------------------------------------------------------------------------- setup

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(cfg: CompressConfig) -> Path:
    """A new folder, or the given one. An existing finished or partial run is never
    overwritten unless `--resume` asks to continue it."""
    if cfg.out:
        run_dir = Path(cfg.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{stamp}-{Path(cfg.teacher).stem}"
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"output {run_dir} exists and is not a folder")
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.resume:
        what = "a finished run" if (run_dir / MANIFEST_NAME).exists() else "a partial run"
        raise OutputError(f"output folder {run_dir} already holds {what}; pass --resume to continue it "
                          "or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to output folder {run_dir}: {e.strerror or e}") from None
    return run_dir


def _check_resume_config(run_dir: Path, cfg: CompressConfig) -> None:
    """A resumed run must be the same run: the choices that shape results must match."""
    saved = run_dir / "config.json"
    current = cfg.to_dict()
    if saved.exists():
        old = json.loads(saved.read_text())
        shaping = ("teacher", "data", "seed", "image_size", "method", "sizes", "epochs", "proxy",
                   "search_spaces", "budget", "profile")
        changed = [k for k in shaping if json.dumps(old.get(k)) != json.dumps(current.get(k))]
        if changed:
            raise ConfigError(f"cannot resume {run_dir}: {', '.join(changed)} changed since the run started "
                              f"(was {', '.join(f'{k}={old.get(k)!r}' for k in changed)})")
    write_json_atomic(saved, current)


# ---------------------------------------------------------------------------- stages

def stage_teacher(teacher: Teacher, data: DataSplits) -> dict[str, Any]:
    logits = predict_logits(teacher.module, data.x_val)
    example = data.x_val[:1]
    return {
        "path": teacher.source, "sha256": teacher.sha256, "format": teacher.format,
        "prunable": teacher.prunable, "input_shape": list(teacher.spec.shape),
        "num_classes": teacher.spec.num_classes,
        "params": P.count_params(teacher.module),
        "macs": _macs(teacher.module, example),
        "accuracy": accuracy(logits, data.y_val),
    }


def _macs(module: nn.Module, example: torch.Tensor) -> int:
    try:
        return P.count_macs(module, example)
    except Exception:  # a non-prunable (script) teacher cannot be traced for MACs
        return 0


def stage_skeleton(teacher: Teacher, data: DataSplits, profile: HardwareProfile, budget: Budget,
                   cfg: CompressConfig, run_dir: Path, progress: Progress) -> list[Servable]:
    """Fixed width ratios of the teacher (Torch-Pruning), measured; the largest that fits is distilled."""
    from .distill.single import KDConfig, distill_single
    from .export import export_onnx
    from .hardware import is_measurable, measure_onnx, predict_latency

    if not teacher.prunable:
        raise ConfigError("the skeleton method needs a prunable teacher; use --method nested (family students)")
    example = data.x_train[:2]
    groups = P.channel_groups(teacher.module, example)
    order = P.importance_order(teacher.module, example, groups)
    ratios = sorted(set(cfg.sizes or (0.75, 0.5, 0.375, 0.25)), reverse=True)
    cand_dir = run_dir / "candidates"
    cand_dir.mkdir(exist_ok=True)
    fits = []
    task = progress.add("measure candidates", total=len(ratios))
    for r in ratios:
        module = P.materialize(teacher.module, example, groups, r, order, profile.round_to)
        if is_measurable(profile):
            onnx = export_onnx(module, data.x_val[:8], cand_dir / f"w{round(r * 100):03d}.onnx", slim=False)
            lat = measure_onnx(onnx.path, profile, teacher.spec.shape)
        else:
            lat = predict_latency(module, teacher.spec.shape, profile)
        progress.advance(task)
        progress.log(f"  width {r:.3f}: {P.count_macs(module, data.x_val[:1]) / 1e6:.1f} MMACs, "
                     f"{profile.stat} {lat.value():.3f} ms{'' if lat.measured else ' (predicted)'}")
        if lat.value() <= budget.ms:
            fits.append((r, module))
    r, student = fits[0] if fits else (ratios[-1], P.materialize(teacher.module, example, groups, ratios[-1],
                                                                 order, profile.round_to))
    ckpt = run_dir / "student.pt"
    if cfg.resume and ckpt.exists():
        student.load_state_dict(torch.load(ckpt, weights_only=True))
    else:
        distill_single(student, teacher.module, data, KDConfig(epochs=cfg.epochs, batch_size=cfg.batch_size,
                                                               seed=cfg.seed), progress, label=f"distil w{r:.2f}")
        torch.save(student.state_dict(), ckpt)
    return [Servable(name=f"w{round(r * 100):03d}", ratio=r, module=student.eval())]


def stage_nested(teacher: Teacher, data: DataSplits, profile: HardwareProfile, budget: Budget,
                 teacher_latency_ms: float, cfg: CompressConfig, run_dir: Path,
                 progress: Progress) -> tuple[list[Servable], dict[str, Any], dict[str, Any]]:
    """Search a student under the budget, widen it into a TA, train the nested family in one run."""
    from .distill import DistillConfig, choose_sizes, train_family
    from .search import SearchConfig, build_arch, run_search

    latency_fn = _latency_fn(profile, teacher.spec.shape, cfg.calibration_models)
    search_cfg = SearchConfig(spaces=tuple(s for s in cfg.search_spaces
                                           if s != "teacher_scaled" or teacher.prunable),
                              proxy=cfg.proxy, n_trials=cfg.search_trials, sampler=cfg.sampler, seed=cfg.seed,
                              round_to=profile.round_to)
    result = run_search(teacher, data, latency_fn=latency_fn, budget_ms=budget.ms,
                        teacher_latency_ms=teacher_latency_ms, config=search_cfg, run_dir=run_dir / "search",
                        storage=cfg.storage, resume=cfg.resume, progress=progress)
    _seed_everything(cfg.seed)
    ta = build_arch(result.ta.arch, teacher)
    example = data.x_train[:2]
    groups = P.channel_groups(ta, example)
    order = P.importance_order(ta, example, groups)
    if cfg.sizes:
        sizes = [(f"w{round(r * 100):03d}", float(r)) for r in sorted(set(cfg.sizes), reverse=True)]
    else:
        sizes = choose_sizes(ta, example, groups, order, latency_fn, budget.ms, n=4,
                             student_ratio=result.ta.arch.get("student_ratio"), round_to=profile.round_to)
    dcfg = DistillConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, round_to=profile.round_to,
                         **_recipe(result.ta.arch))
    family = train_family(teacher.module, ta, data, sizes=sizes, config=dcfg, run_dir=run_dir / "family",
                          resume=cfg.resume, progress=progress)
    servables = [Servable(name=n, ratio=family.ratios[n], module=m.eval(), arch=result.ta.arch)
                 for n, m in family.models.items()]
    search_info = {
        "storage": result.storage, "study_name": result.study_name, "n_trials": result.n_trials,
        "n_failed": result.n_failed, "proxy": cfg.proxy,
        "student": _candidate_json(result.student), "ta": _candidate_json(result.ta),
        "pareto": [_candidate_json(c) for c in result.pareto],
    }
    training = {"history": family.history, "train_seconds": family.train_seconds,
                "sizes": {n: family.ratios[n] for n in family.models}}
    return servables, search_info, training


def _recipe(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Nested training needs a higher learning rate than single-model KD: every size shares
    the steps. lr 1e-2, tau 1-2 and +-2 shifts were best for CNN TAs on digits and mnist1d
    (benchmarks/results/nested.md); transformers keep the conservative defaults."""
    if arch.get("family") == "transformer":
        return {}
    return {"lr": 1e-2, "temperature": 2.0, "augment": "shift"}


def _candidate_json(c) -> dict[str, Any]:
    return {"arch": dict(c.arch), "proxy_scores": dict(c.proxy_scores), "est_latency_ms": c.est_latency_ms,
            "trial_number": c.trial_number, "params": c.params, "macs": c.macs}


def _latency_fn(profile: HardwareProfile, shape: tuple[int, ...],
                calibration_models: int) -> Callable[[nn.Module], float]:
    """Predicted latency (ms) of a module on the profile: host-calibrated where measurable, roofline otherwise."""
    model = _predictor(profile, shape, calibration_models)
    return lambda m: model.predict_ms(m, shape)


def _predictor(profile: HardwareProfile, shape: tuple[int, ...], calibration_models: int):
    """Host-fitted cost model where the profile is measurable here (calibrated once per
    machine and input shape, then cached), else the datasheet roofline."""
    from .hardware import predictor_for

    return predictor_for(profile, shape, n_models=calibration_models)


def stage_export(servables: list[Servable], teacher: Teacher, data: DataSplits, budget: Budget,
                 profiles: list[HardwareProfile], cfg: CompressConfig, run_dir: Path,
                 progress: Progress) -> list[dict[str, Any]]:
    """ONNX (+ parity), TorchScript, optional INT8 per size; accuracy; latency on every profile."""
    from .export import export_onnx, export_torchscript, onnx_predict, quantize_int8, sha256_file
    from .hardware import is_measurable, latency_report, measure_onnx

    predictors = {p.name: _predictor(p, teacher.spec.shape, cfg.calibration_models) for p in profiles}

    teacher_logits = predict_logits(teacher.module, data.x_val)
    out = []
    task = progress.add("export + measure sizes", total=len(servables))
    for s in servables:
        folder = run_dir / "models" / s.name
        folder.mkdir(parents=True, exist_ok=True)
        onnx = export_onnx(s.module, data.x_val[:64], folder / "model.onnx")
        files = {"onnx": str(onnx.path)}
        try:
            files["torchscript"] = str(export_torchscript(s.module, data.x_val[:2], folder / "model.ts.pt"))
        except Exception as e:  # serving from ONNX still works; say why the PyTorch file is missing
            log.warning("TorchScript export of %s failed: %s", s.name, e)
        logits = torch.from_numpy(onnx_predict(onnx.path, data.x_val))
        entry: dict[str, Any] = {
            "name": s.name, "ratio": s.ratio, "params": P.count_params(s.module),
            "macs": _macs(s.module, data.x_val[:1]),
            "accuracy": accuracy(logits, data.y_val), "teacher_agreement": agreement(logits, teacher_logits),
            "onnx_max_abs_diff": onnx.max_abs_diff, "parity_ok": onnx.parity_ok, "opset": onnx.opset,
            "latency": {}, "predicted_latency_ms": {},
        }
        for prof in profiles:
            # measured where this machine can, predicted otherwise; the prediction is kept beside
            # a measurement so the report can show both
            rep = latency_report(prof, teacher.spec.shape, onnx_path=onnx.path, module=s.module,
                                 predictor=predictors[prof.name], budget_ms=budget.ms)
            entry["latency"][prof.name] = rep
            entry["predicted_latency_ms"][prof.name] = rep.env.get("predicted_ms", rep.value())
        if cfg.int8:
            q = quantize_int8(onnx.path, data.x_train[:256], folder / "model.int8.onnx")
            q_logits = torch.from_numpy(onnx_predict(q, data.x_val))
            files["onnx_int8"] = str(q)
            entry["int8"] = {"file": str(q), "accuracy": accuracy(q_logits, data.y_val),
                             "latency": {p.name: measure_onnx(q, p, teacher.spec.shape)
                                         for p in profiles if is_measurable(p)}}
        entry["files"] = files
        entry["sha256"] = {k: sha256_file(v) for k, v in files.items()}
        out.append(entry)
        progress.advance(task)
    return out


def _teacher_latency(teacher: Teacher, data: DataSplits, profiles: list[HardwareProfile],
                     run_dir: Path) -> dict[str, LatencyReport]:
    from .export import export_onnx
    from .hardware import is_measurable, measure_onnx, predict_latency

    lat: dict[str, LatencyReport] = {}
    onnx_path = None
    try:
        onnx_path = export_onnx(teacher.module, data.x_val[:16], run_dir / "teacher.onnx", slim=False).path
    except Exception as e:
        log.warning("teacher could not be exported to ONNX (%s); its latency is predicted", e)
    for prof in profiles:
        if onnx_path is not None and is_measurable(prof):
            lat[prof.name] = measure_onnx(onnx_path, prof, teacher.spec.shape)
        elif teacher.prunable:
            lat[prof.name] = predict_latency(teacher.module, teacher.spec.shape, prof)
    return lat


# ---------------------------------------------------------------------------- run

def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import optuna
    import torch_pruning

    return {"compressor": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "optuna": optuna.__version__,
            "torch_pruning": getattr(torch_pruning, "__version__", "unknown")}


def select(models: list[dict[str, Any]], profile: str, budget_ms: float) -> str | None:
    """The most accurate size whose latency statistic on `profile` fits; ties go to the faster."""
    fitting = [m for m in models if m["meets_budget"]]
    if not fitting:
        return None
    best = max(fitting, key=lambda m: (m["accuracy"], -m["latency"][profile].value()))
    return best["name"]


def run(cfg: CompressConfig, console: Console | None = None) -> RunResult:
    from .hardware import load_profile
    from .hardware import meets_budget as fits

    console = console or Console(stderr=True)
    budget = parse_budget(cfg.budget)
    profile = load_profile(cfg.profile)
    extra = [load_profile(p) for p in cfg.extra_profiles if p != profile.name]
    profiles = [profile, *extra]
    _seed_everything(cfg.seed)
    data = load_data(cfg.data, seed=cfg.seed, image_size=cfg.image_size)
    teacher = load_teacher(cfg.teacher, data.x_val[:8], data.num_classes, arch=cfg.arch,
                           trust_pickle=cfg.trust_pickle, input_shape=cfg.input_shape)
    run_dir = prepare_run_dir(cfg)
    _check_resume_config(run_dir, cfg)
    started = time.perf_counter()
    with Progress(enabled=cfg.progress, console=console) as progress:
        progress.log(f"[bold]compress[/] {cfg.teacher} -> {run_dir}  budget {budget} on {profile.name}"
                     f"{'' if profile.measured else ' (predicted)'}")
        teacher_info = stage_teacher(teacher, data)
        teacher_info["latency"] = _teacher_latency(teacher, data, profiles, run_dir)
        t_lat = teacher_info["latency"].get(profile.name)
        progress.log(f"teacher: {teacher_info['params']:,} params, accuracy {teacher_info['accuracy']:.3f}, "
                     f"{profile.stat} {t_lat.value() if t_lat else float('nan'):.3f} ms")
        search_info, training = None, None
        if cfg.method == "skeleton":
            servables = stage_skeleton(teacher, data, profile, budget, cfg, run_dir, progress)
        else:
            servables, search_info, training = stage_nested(
                teacher, data, profile, budget, t_lat.value() if t_lat else float("inf"), cfg, run_dir, progress)
        models = stage_export(servables, teacher, data, budget, profiles, cfg, run_dir, progress)
    for m in models:
        m["meets_budget"] = fits(m["latency"][profile.name], budget.ms)
    selected = select(models, profile.name, budget.ms)
    manifest = _manifest(cfg, budget, profile, teacher_info, models, selected, search_info, training,
                         time.perf_counter() - started)
    _finish(run_dir, manifest)
    _summary(console, manifest, profile, budget, run_dir)
    return RunResult(run_dir, manifest, selected, EXIT_OK if selected else EXIT_BUDGET_NOT_MET)


def _manifest(cfg, budget, profile, teacher_info, models, selected, search_info, training, seconds) -> dict:
    from .export import tensorrt_available

    trt_ok, trt_reason = tensorrt_available()
    closest = min(models, key=lambda m: m["latency"][profile.name].value()) if models else None
    manifest: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "compressor_version": __version__, "versions": _versions(), "config": cfg.to_dict(),
        "budget": {"text": budget.text, "ms": budget.ms, "profile": profile.name, "stat": profile.stat,
                   "measured": profile.measured},
        "teacher": teacher_info, "models": models, "selected": selected, "budget_met": selected is not None,
        "closest": None if closest is None else {
            "name": closest["name"], "latency_ms": closest["latency"][profile.name].value(),
            "over_budget_ms": closest["latency"][profile.name].value() - budget.ms},
        "tensorrt": {"available": trt_ok, "reason": trt_reason},
        "seconds": seconds,
    }
    if search_info:
        manifest["search"] = search_info
    if training:
        manifest["training"] = training
    return manifest


def _finish(run_dir: Path, manifest: dict) -> None:
    """Report and model cards first; the manifest last, so its presence means 'complete'."""
    from .export import set_onnx_metadata, sha256_file
    from .report import write_model_cards, write_report

    for m in manifest["models"]:
        set_onnx_metadata(m["files"]["onnx"], _onnx_metadata(manifest, m))
        m["sha256"]["onnx"] = sha256_file(m["files"]["onnx"])  # metadata changed the file
    data = to_jsonable(manifest)
    cards = write_model_cards(run_dir, data)
    for m, m_json in zip(manifest["models"], data["models"]):
        if m["name"] in cards:
            m["files"]["model_card"] = m_json["files"]["model_card"] = str(cards[m["name"]])
    write_report(run_dir, data)
    write_manifest(run_dir, data)


def _onnx_metadata(manifest: dict, m: dict) -> dict[str, str]:
    from .export import onnx_metadata

    return onnx_metadata(name=m["name"], ratio=m["ratio"], accuracy=m["accuracy"],
                         teacher_agreement=m["teacher_agreement"], latency=m["latency"],
                         budget=f"{manifest['budget']['text']} {manifest['budget']['stat']} on "
                                f"{manifest['budget']['profile']}",
                         teacher_sha256=manifest["teacher"]["sha256"])


def _summary(console: Console, manifest: dict, profile: HardwareProfile, budget: Budget, run_dir: Path) -> None:
    kind = "measured" if profile.measured else "predicted"
    table = Table(title=f"{run_dir}  (budget {budget} {profile.stat} on {profile.name}, {kind})")
    for col in ("size", "width", "params", "MMACs", "accuracy", "agree", f"{profile.stat} ms", "fits"):
        table.add_column(col, justify="right" if col not in ("size", "fits") else "left")
    t = manifest["teacher"]
    t_lat = t["latency"].get(profile.name)
    table.add_row("teacher", "-", f"{t['params']:,}", f"{t['macs'] / 1e6:.1f}", f"{t['accuracy']:.3f}", "-",
                  f"{t_lat.value():.3f}" if t_lat else "-", "")
    for m in manifest["models"]:
        lat = m["latency"][profile.name]
        mark = ("yes" if m["meets_budget"] else "no") + (" <- selected" if m["name"] == manifest["selected"] else "")
        ratio = m["ratio"] if isinstance(m["ratio"], (int, float)) else "mixed"
        table.add_row(m["name"], f"{ratio:.3f}" if isinstance(ratio, float) else str(ratio), f"{m['params']:,}",
                      f"{m['macs'] / 1e6:.1f}", f"{m['accuracy']:.3f}", f"{m['teacher_agreement']:.3f}",
                      f"{lat.value():.3f}{'' if lat.measured else ' (pred)'}", mark)
    console.print(table)
    if manifest["selected"]:
        console.print(f"selected [bold]{manifest['selected']}[/]: "
                      f"{run_dir / 'models' / manifest['selected'] / 'model.onnx'}")
    else:
        c = manifest["closest"]
        console.print(f"[red]no size meets {budget}[/]: the fastest, {c['name']}, takes {c['latency_ms']:.3f} ms "
                      f"({c['over_budget_ms']:+.3f} ms over)")
    console.print(f"manifest: {run_dir / MANIFEST_NAME}   report: {run_dir / 'report.html'}")
