"""The stages of a causal-LM run, top to bottom (`tasks.causal_lm` hands the run here).

    intake    profiles (measured ones: a language model's latency is timed, never predicted),
              the GPT-2 teacher and its tokenizer, the corpus; the run folder
    teacher   its ONNX export (parity), latency per 128-token forward, metrics; the budget
    search    heads and FFN neurons sorted by importance; the family's sizes from the budget,
              on a latency line through two measured models (the teacher and the smallest)
    distill   every size in one run, the TA the widest (`lm.train`)
    export    each size a dense GPT2LMHeadModel (save_pretrained + tokenizer) and ONNX with
              dynamic batch and sequence (parity-checked); metrics; latency
    select    `pipeline.stage_select`: the most accurate fitting size, re-measured in a fresh process
    seal      ONNX metadata (the tokenizer a server applies), hashes
    record    the same manifest, report and model cards as an image run

The shared rooms (run folder, budget, latency, selection, record) are the pipeline's own.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..distill import size_name
from ..distill.epochs import DEFAULT_EPOCHS
from ..errors import EXIT_BUDGET_NOT_MET, EXIT_OK, ConfigError
from ..export import export_onnx, onnx_metadata, onnx_predict, set_onnx_metadata
from ..files import first_line, write_json
from ..hardware import is_measurable, latency_report, load_profile, steadier
from ..journal import Journal
from ..manifest import relative_path
from ..progress import Progress
from ..record import RunRecord, SizeRecord, TeacherRecord
from ..report import model_card_filename, print_summary
from ..types import HardwareProfile
from .gpt import (
    LogitsOnly,
    Shape,
    dense_model,
    full_shape,
    macs_per_token,
    nested_forward,
    scaled_shape,
    sort_by_importance,
)
from .metrics import LMScores, score
from .train import LMDistillConfig, train_nested_lm

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import CompressConfig
    from ..pipeline import RunResult
    from ..ranks import Ranks
    from ..tasks.causal_lm import CausalLM, LMData, LMTeacher

__all__ = ["run_causal_lm"]

log = logging.getLogger(__name__)

# ratios of the teacher's per-token compute the search considers for the budget's student
_GRID = tuple(round(0.05 * i, 2) for i in range(20, 1, -1))
_PASSAGES = 64  # last-word passages scored per size: each is a short greedy decode
_METHOD = ("nested (MatFormer / MatTA) distillation of a GPT-2: the TA and every size share one set of weights "
           "initialised from the teacher's, each layer's attention heads and FFN neurons sorted by importance; "
           "this size ({pct} of the teacher's compute per token) keeps the first {layers} layers, in each the first "
           "{heads} heads and {ffn} FFN neurons, trained in the same run with token-level KD (the manifest's "
           "training.recipe; by default the teacher teaches the TA and the TA the students), then cut into a dense "
           "GPT2LMHeadModel (transformers, heads pruned with prune_heads)")
_PARITY_ATOL = 1e-3  # logits over a few hundred tokens and the vocabulary: fp32 sums differ by ~1e-5


def run_causal_lm(task: "CausalLM", cfg: "CompressConfig", console: "Console", held: ExitStack,
                  ranks: "Ranks | None" = None) -> "RunResult":
    from ..pipeline import RunResult, _StageClock, run_folder, stage_record, stage_select, stage_track
    from ..tasks.causal_lm import load_lm_teacher

    if ranks is not None:
        raise ConfigError("language-model runs train on one process; run compress without torchrun")
    if cfg.method != "nested":
        raise ConfigError("language models are compressed with --method nested (one nested family)")
    started, clock = time.monotonic(), _StageClock()
    with clock("intake"):
        profile = load_profile(cfg.profile)
        profiles = [profile, *(load_profile(p) for p in cfg.also_profile if p != profile.name)]
        profiles = _measured(profiles, profile)
        torch.manual_seed(cfg.seed)
        text = task.read_text(cfg)
        teacher = load_lm_teacher(cfg.teacher)
        data = task.load_data(cfg, teacher, text)
        run_dir = held.enter_context(run_folder(cfg))
        journal = Journal(run_dir)
        clock.progress = progress = held.enter_context(Progress(enabled=cfg.progress, console=console,
                                                                  journal=journal, started=started))
    shape = task.timing_shape(data)
    with clock("teacher"):
        t_onnx = _export(LogitsOnly(teacher.model), task.example_inputs(data, 4), run_dir / "teacher.onnx")
        t_latency = {p.name: latency_report(p, shape, onnx_path=t_onnx.path) for p in profiles}
        if cfg.budget_spec.factor is not None:  # a relative budget: its one figure, taken twice
            t_latency[profile.name] = steadier(t_latency[profile.name], t_onnx.path, profile, shape)
        t_decode = _decode(teacher.model, data, profiles, run_dir / "teacher.decode.onnx", run_dir)
        t_scores = _scores(teacher.model, data, teacher)
        teacher_rec = TeacherRecord(
            path=teacher.source, sha256=teacher.sha256, format="huggingface", prunable=True, input_shape=shape,
            num_classes=int(teacher.model.config.vocab_size), params=_params(teacher.model),
            macs=macs_per_token(teacher.model.config, full_shape(teacher.model), data.context) * data.context,
            accuracy=task.headline_of(_metrics(t_scores)), latency=t_latency, metrics=_metrics(t_scores),
            decode=t_decode)
        budget = cfg.budget_spec.resolve(profile.name, profile.stat, t_latency[profile.name].value())
    progress.log(f"[bold]compress[/] {cfg.teacher} -> {run_dir}  budget {budget.describe()}")
    progress.log(f"teacher: {teacher_rec.params:,} params, perplexity {t_scores.perplexity:.3f}, next-token "
                 f"accuracy {t_scores.next_token_accuracy:.3f}, {profile.stat} "
                 f"{t_latency[profile.name].value():.3f} ms per {data.context}-token forward")
    with clock("search"):
        calib = torch.cat([w[:, :-1] for w in _train_windows(data, 16, cfg.seed)])
        ordered = sort_by_importance(teacher.model, calib)
        shapes, search_info = _family(ordered, teacher_rec, data, profile, budget.ms, cfg, run_dir)
    progress.log("sizes: " + ", ".join(f"{n} ({s.layers} layers, {s.heads} heads, FFN {s.ffn})"
                                       for n, (s, _) in shapes.items()))
    with clock("distill"):
        family = copy.deepcopy(ordered)
        dcfg = LMDistillConfig(steps=_steps(cfg, data), batch_size=cfg.batch_size, context=data.context,
                               seed=cfg.seed, recipe=cfg.lm_recipe, taid=cfg.lm_taid)
        bar = progress.add("distil the nested family", total=dcfg.steps)
        trained = train_nested_lm(teacher.model, family, [s for s, _ in shapes.values()], data.corpus.train, dcfg,
                                  on_step=lambda step, losses: progress.advance(bar))
        family.save_pretrained(run_dir / "family")
        training = {"loss_history": trained.history, "train_seconds": trained.seconds, "steps": trained.steps,
                    "sizes": {n: r for n, (_, r) in shapes.items()},
                    "shapes": {n: s.to_dict() for n, (s, _) in shapes.items()},
                    "ta": next(iter(shapes)), "family_weights": "family/model.safetensors",
                    "config": dataclasses.asdict(dcfg), "device": "cpu", "ranks": 1, "recipe": dcfg.recipe,
                    "taid": dcfg.taid,
                    "forwards_per_step": trained.forwards_per_step(),
                    "losses": [{"name": "ce", "weight": dcfg.w_ce}, {"name": "kd_teacher", "weight": dcfg.w_kd},
                               {"name": "kd_ta", "weight": dcfg.w_ta}]}
        progress.done("distill", "family", seconds=round(trained.seconds, 1))
    with clock("export"):
        sizes = []
        for name, (s, ratio) in shapes.items():
            sizes.append(_export_size(name, s, ratio, family, teacher, data, t_scores, task, budget, profiles,
                                      run_dir))
            progress.done("export", name, total=len(shapes))
    with clock("select"):
        selected, verification, sizes = stage_select(sizes, budget, profile, shape, run_dir, progress)
    serving = task.serving(data, teacher.tokenizer)
    with clock("seal"):
        sizes = [_seal(s, budget, teacher_rec, serving, task.name, run_dir) for s in sizes]
    record = RunRecord(config=cfg.to_dict(), budget=budget, teacher=teacher_rec, sizes=tuple(sizes),
                       serving=serving, task={**task.record(), "context": data.context, "method": _METHOD,
                                              "corpus": {"name": data.corpus.name, "documents": data.corpus.documents,
                                                         "train_tokens": len(data.corpus.train),
                                                         "val_tokens": int(data.val_windows[:, 1:].numel()),
                                                         "passages": len(data.corpus.passages)}},
                       selected=selected, verification=tuple(verification), search=search_info,
                       training=training, host={}, stages=clock.seconds, seconds=clock.total())
    manifest = stage_record(record, run_dir)
    tracking = stage_track(cfg, run_dir, manifest, progress)  # --mlflow, as for image runs
    print_summary(console, manifest, run_dir)
    return RunResult(run_dir, manifest, selected, EXIT_OK if selected else EXIT_BUDGET_NOT_MET, tracking)


# ---------------------------------------------------------------------------- intake

def _measured(profiles: list[HardwareProfile], budget_profile: HardwareProfile) -> list[HardwareProfile]:
    """The profiles a language model is timed on: those measurable here with an ONNX runtime."""
    def ok(p: HardwareProfile) -> bool:
        return is_measurable(p) and p.backend in ("onnxruntime-cpu", "openvino-cpu")

    if not ok(budget_profile):
        raise ConfigError(f"profile {budget_profile.name!r} cannot be measured on this machine; a language model's "
                          "latency is measured, not predicted: use a host profile such as host-cpu-1t")
    kept = [p for p in profiles if ok(p)]
    for p in profiles:
        if p not in kept:
            log.warning("profile %s skipped: language-model latency is measured only", p.name)
    return kept


def _train_windows(data: "LMData", n: int, seed: int) -> list[torch.Tensor]:
    from .corpus import random_windows

    g = torch.Generator().manual_seed(seed)
    return [random_windows(data.corpus.train, data.context, n, g)]


def _steps(cfg: "CompressConfig", data: "LMData") -> int:
    """Training steps: `--steps`, else `--epochs` passes over the training tokens."""
    if cfg.steps:
        return cfg.steps
    return (cfg.epochs or DEFAULT_EPOCHS) * max(1, len(data.corpus.train) // (cfg.batch_size * data.context))


# ---------------------------------------------------------------------------- search

def _family(ordered: torch.nn.Module, teacher: TeacherRecord, data: "LMData", profile: HardwareProfile,
            budget_ms: float, cfg: "CompressConfig", run_dir: Path) -> tuple[dict[str, tuple[Shape, float]], dict]:
    """The nested sizes, widest (the TA) first: {name: (shape, compute ratio)}.

    With `--sizes` those ratios of the teacher's per-token compute. Otherwise training-free:
    latency is taken as a line in multiply-adds through two measured points, the teacher and
    the smallest candidate (untrained weights time the same as trained ones); the student is
    the largest ratio on the grid predicted within the budget, the TA halfway between it and
    the teacher, and two smaller sizes below it."""
    config, full = ordered.config, full_shape(ordered)
    macs = lambda s: macs_per_token(config, s, data.context) * data.context  # noqa: E731
    if cfg.sizes:
        ratios = sorted({float(r) for r in cfg.sizes}, reverse=True)
        info: dict[str, Any] = {"method": "given ratios (--sizes)"}
    else:
        small = scaled_shape(full, _GRID[-1], profile.round_to or 8)
        onnx = _export(LogitsOnly(dense_model(ordered, small)), data.val_windows[:2, :-1],
                       run_dir / "candidates" / "smallest.onnx")
        small_ms = latency_report(profile, (data.context,), onnx_path=onnx.path).value()
        t_ms, t_macs, s_macs = teacher.latency[profile.name].value(), teacher.macs, macs(small)
        slope = (t_ms - small_ms) / max(1, t_macs - s_macs)
        predict = lambda s: small_ms + slope * (macs(s) - s_macs)  # noqa: E731
        fits = [r for r in _GRID if predict(scaled_shape(full, r, profile.round_to or 8)) <= budget_ms]
        student = fits[0] if fits else _GRID[-1]
        ratios = [round((1 + student) / 2, 3), student, round(student * 0.7, 3), round(student * 0.5, 3)]
        info = {"method": "latency line through the teacher and the smallest candidate, in multiply-adds",
                "points": [{"macs": t_macs, "ms": t_ms}, {"macs": s_macs, "ms": small_ms, "shape": small.to_dict()}],
                "student_ratio": student, "feasible": bool(fits),
                "predicted_ms": {size_name(r): predict(scaled_shape(full, r, profile.round_to or 8)) for r in ratios}}
    out: dict[str, tuple[Shape, float]] = {}
    for r in ratios:
        s = scaled_shape(full, r, profile.round_to or 8)
        if all(s != have for have, _ in out.values()):
            out[size_name(r)] = (s, r)
    return out, {**info, "ta": next(iter(out)), "shapes": {n: s.to_dict() for n, (s, _) in out.items()}}


# ---------------------------------------------------------------------------- export + measure

def _export(module: torch.nn.Module, example: torch.Tensor, path: Path):
    return export_onnx(module.eval(), example, path, input_name="input_ids", dynamic={1: "sequence"}, slim=False,
                       atol=_PARITY_ATOL)


def _scores(model: torch.nn.Module, data: "LMData", teacher: "LMTeacher", onnx: Path | None = None) -> LMScores:
    """Metrics of one model: token metrics from the ONNX file when given (what is served), the
    last-word decoding in PyTorch (the ONNX file's equal, by its parity check)."""
    def torch_logits(x: torch.Tensor) -> torch.Tensor:
        return nested_forward(model, x)

    def onnx_logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(onnx_predict(onnx, x, batch_size=16))

    with torch.no_grad():
        return score(onnx_logits if onnx else torch_logits, data.val_windows, teacher.tokenizer,
                     data.corpus.passages[:_PASSAGES], data.context, last_word_fn=torch_logits)


def _metrics(s: LMScores) -> dict[str, float | None]:
    return {"next_token_accuracy": s.next_token_accuracy, "perplexity": s.perplexity,
            "last_word_accuracy": s.last_word_accuracy, "cross_entropy": s.cross_entropy}


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _export_size(name: str, shape: Shape, ratio: float, family: torch.nn.Module, teacher: "LMTeacher",
                 data: "LMData", t_scores: LMScores, task: "CausalLM", budget: Any,
                 profiles: Sequence[HardwareProfile], run_dir: Path) -> SizeRecord:
    folder = run_dir / "models" / name
    dense = dense_model(family, shape)
    # the dense model is a plain transformers model: it loads with from_pretrained, tokenizer beside it
    dense.save_pretrained(folder / "hf")
    teacher.tokenizer.save_pretrained(folder / "tokenizer")
    onnx = _export(LogitsOnly(dense), task.example_inputs(data, 4), folder / "model.onnx")
    # the ONNX graph is traced from `nested_forward`; the transformers model itself must agree with it
    # too, or the folder's from_pretrained copy would serve something else
    with torch.no_grad():
        x = task.example_inputs(data, 2)
        hf_diff = float((dense(x).logits - nested_forward(dense, x)).abs().max())
    notes = list(onnx.notes)
    if hf_diff > _PARITY_ATOL:
        notes.append(f"the transformers model differs from the exported graph by {hf_diff:.3g}")
    scores = _scores(dense, data, teacher, onnx=onnx.path)
    latency = {p.name: latency_report(p, task.timing_shape(data), onnx_path=onnx.path,
                                      budget=budget if p.name == budget.profile else None) for p in profiles}
    agree = float((scores.argmax == t_scores.argmax).float().mean()) if t_scores.argmax is not None else math.nan
    files = {"onnx": relative_path(run_dir, onnx.path),
             "hf_config": relative_path(run_dir, folder / "hf" / "config.json"),
             "hf_weights": relative_path(run_dir, folder / "hf" / "model.safetensors"),
             "tokenizer_config": relative_path(run_dir, folder / "tokenizer" / "tokenizer_config.json")}
    metrics = _metrics(scores)
    decode = _decode(dense, data, profiles, folder / "decode.onnx", run_dir)
    if decode.get("file"):
        files["decode_onnx"] = decode["file"]
    size = SizeRecord(name=name, ratio=ratio, params=_params(dense),
                      macs=macs_per_token(dense.config, shape, data.context) * data.context,
                      accuracy=task.headline_of(metrics), teacher_agreement=agree,
                      onnx_max_abs_diff=onnx.max_abs_diff, parity_ok=onnx.parity_ok and hf_diff <= _PARITY_ATOL,
                      opset=onnx.opset,
                      latency=latency, files=files, arch={**shape.to_dict(), "family": "gpt2", "ratio": ratio},
                      notes=tuple(notes), metrics=metrics, decode=decode)
    return dataclasses.replace(size, meets_budget=budget.fits(latency[budget.profile]))


def _decode(model: torch.nn.Module, data: "LMData", profiles: Sequence[HardwareProfile], path: Path,
            run_dir: Path) -> dict[str, Any]:
    """The KV-cache decoder step (`lm.decode`): its file, its parity against the full forward, and
    one generated token's latency after context - 1 cached tokens on each ONNX Runtime profile. A step
    that cannot be made is recorded with the reason; the size stays servable from model.onnx."""
    from .decode import export_decode_step, measure_decode_step

    try:
        made = export_decode_step(model, data.val_windows[:1, :data.context], path)
        latency = {p.name: measure_decode_step(made.path, model, p, made.past) for p in profiles
                   if p.backend == "onnxruntime-cpu"}
    except Exception as e:  # noqa: BLE001 - the window model is what is served; say why the step is missing
        log.warning("no KV-cache decoder step for %s: %s", path.parent.name, first_line(e))
        return {"error": first_line(e)}
    return {"file": relative_path(run_dir, made.path), "max_abs_diff": made.max_abs_diff,
            "parity_ok": made.parity_ok, "past_tokens": made.past, "latency": latency}


def _seal(s: SizeRecord, budget: Any, teacher: TeacherRecord, serving: dict[str, Any], task: str,
          run_dir: Path) -> SizeRecord:
    """ONNX metadata (figures and the tokenizer a server applies), preprocess.json beside the
    file, then every file hashed (the export record `size.json` kept in step)."""
    from ..pipeline import _record_export

    onnx = run_dir / s.files["onnx"]
    set_onnx_metadata(onnx, onnx_metadata(
        name=s.name, ratio=s.ratio, accuracy=s.accuracy, teacher_agreement=s.teacher_agreement, latency=s.latency,
        budget=budget.describe(), teacher_sha256=teacher.sha256, task=task, preprocess=serving["preprocess"],
        metrics={k: v for k, v in s.metrics.items()}, input_name=serving["input_name"]))
    prep = write_json(onnx.parent / "preprocess.json", serving["preprocess"])
    files = {**s.files, "preprocess": relative_path(run_dir, prep)}
    sealed = _record_export(dataclasses.replace(s, files=files), onnx.parent, run_dir)
    return dataclasses.replace(sealed, files={**files, "model_card": model_card_filename(s.name)})

