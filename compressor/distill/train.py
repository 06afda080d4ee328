"""Teacher → TA → nested students, trained together in ONE run (MatTA + MatFormer).

Each step, on one (optionally augmented) batch:

1. the teacher runs once, frozen, without gradients;
2. the TA (the family at full width) learns from the teacher and the labels:
   ``ta_ce·CE(TA, y) + ta_kd·τ²·KL(teacher ‖ TA)``;
3. students (nested sizes) follow the sandwich rule: the smallest every step
   plus `n_random_widths` of the others at random (the largest, the TA, always
   trains). Each learns from the labels, the TA's detached soft output
   (in-place distillation) and the teacher:
   ``CE(s, y) + α·τ²·KL(TA ‖ s) + β·τ²·KL(teacher ‖ s) + Σ wᵢ·zooᵢ(s, teacher)``;
4. every granularity back-propagates into the shared weights, then ONE
   optimizer step (MatFormer sums the granularities' losses on the same batch).

Students run *sliced* (nested.SubNet), so a width-r student costs about r² of
the TA's MACs, and `train_flops` counts what actually ran: per sample, teacher
forward + 3 × (TA + each trained student) forward MACs (backward ≈ 2× forward).

Every epoch ends with BatchNorm recalibration and validation of every size
and an atomic checkpoint; `resume=True` continues from the last one, so a run
killed at any moment repeats at most the epoch it was in.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import prune as P
from ..errors import ConfigError
from ..evaluate import accuracy, predict_logits
from ..files import first_line
from ..progress import Progress
from ..types import DataSplits, StudentFamily, to_jsonable
from .augment import AUGMENTS, augment
from .checkpoint import load_checkpoint, write_torch
from .features import FeatureTap
from .losses import LOSSES, Out, build_loss, kd_kl
from .nested import NestedFamily, Ratio, SizeSpec, named_tensors, plain_ratio

__all__ = ["DistillConfig", "FamilyResult", "train_family", "CHECKPOINT", "FAMILY_WEIGHTS"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FAMILY_WEIGHTS = "family.pt"
_FORMAT = 1


@dataclass(frozen=True)
class DistillConfig:
    """Nested distillation settings. Loss weights follow the MatTA recipe:
    student = student_ce·CE + alpha·KD(TA) + beta·KD(teacher) + Σ extra; TA = ta_ce·CE + ta_kd·KD(teacher)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    temperature: float = 4.0
    # student <- TA soft output (in-place distillation) and <- teacher; together they weigh as much as
    # the one KD term of plain distillation (CE + τ²KL), so the TA splits the teacher's share, not adds to it
    alpha: float = 0.5
    beta: float = 0.5
    student_ce: float = 1.0
    ta_ce: float = 1.0
    ta_kd: float = 1.0
    extra_losses: tuple[tuple[str, float], ...] = ()  # zoo losses on the student-teacher term
    n_random_widths: int = 2  # students per step besides the smallest (sandwich rule)
    bn_calib_samples: int = 512
    augment: str = "none"  # "shift": random translation by up to `shift` samples/pixels
    shift: int = 2
    seed: int = 0
    round_to: int = 8

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 but got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive but got {getattr(self, name)}")
        for name in ("weight_decay", "alpha", "beta", "student_ce", "ta_ce", "ta_kd", "n_random_widths",
                     "bn_calib_samples", "shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0 but got {getattr(self, name)}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be at least 1 but got {self.round_to}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)} but got {self.augment!r}")
        extra = tuple((str(n), float(w)) for n, w in self.extra_losses)
        for name, _ in extra:
            LOSSES.get(name)  # unknown names fail now, with suggestions
        object.__setattr__(self, "extra_losses", extra)

    @property
    def uses_teacher(self) -> bool:
        return self.ta_kd > 0 or self.beta > 0 or bool(self.extra_losses)


@dataclass
class FamilyResult:
    """The trained family and its extracted sizes (dense, BatchNorm recalibrated, eval mode)."""

    family: StudentFamily
    models: dict[str, nn.Module]
    ratios: dict[str, Ratio]
    val_acc: dict[str, float]
    history: list[dict[str, Any]]
    train_seconds: float
    train_flops: int  # multiply-accumulates: teacher fwd + 3 × (TA + trained students) fwd, per sample
    macs: dict[str, int] = field(default_factory=dict)  # forward MACs of one sample, per size


def train_family(teacher: nn.Module, ta: nn.Module, data: DataSplits, *, sizes: Sequence[SizeSpec],
                 config: DistillConfig = DistillConfig(), run_dir: Path, resume: bool = False,
                 progress: Progress | None = None, arch: Mapping[str, Any] | None = None,
                 groups: Sequence[P.ChannelGroup] | None = None,
                 order: Mapping[str, Sequence[int]] | None = None) -> FamilyResult:
    """Train `ta` (in place) and its nested `sizes` from `teacher` in one run; extract every size.

    `run_dir` receives `checkpoint.pt` (every epoch) and `family.pt` (the TA's
    weights, channel order and sizes). With `resume`, a checkpoint from the
    same run (same sizes and config, else ConfigError) is continued; the TA
    must be rebuilt by the caller from the same arch. `groups`/`order` may be
    passed when already computed (choose_sizes needs them too); a resumed run
    always uses the channel order it was trained with."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sizes = [(str(n), r) for n, r in sizes]
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ckpt is not None:
        _check_same_run(ckpt, config, sizes, ckpt_path)
        order = ckpt["family"]["channel_order"]
    try:
        family = NestedFamily(ta, data.x_train[:2], sizes, groups=groups, order=order, round_to=config.round_to)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        if ckpt is None:
            raise
        raise _does_not_fit(ckpt_path, e) from None
    trainer = _Trainer(teacher, family, data, config)
    try:
        if ckpt is not None:
            try:
                trainer.load_state(ckpt)
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # another TA's weights
                raise _does_not_fit(ckpt_path, e) from None
        trainer.fit(ckpt_path, progress)
        models, val_acc = trainer.last_models or trainer.evaluate()
    finally:
        trainer.close()  # feature hooks off the caller's teacher
    weights = write_torch(run_dir / FAMILY_WEIGHTS, {"ta": ta.state_dict(), **family.state()})
    student_family = StudentFamily(
        arch=dict(arch or {}), ratios=tuple(_mean_ratio(family.ratios[n]) for n in family.names),
        channel_order={k: tuple(v) for k, v in family.order.items()}, weights_path=str(weights),
        sizes={n: family.ratios[n] for n in family.names})
    return FamilyResult(family=student_family, models=models, ratios=dict(family.ratios), val_acc=val_acc,
                        history=trainer.history, train_seconds=trainer.seconds, train_flops=trainer.flops,
                        macs={n: family.subnet(n).macs for n in family.names})


# --------------------------------------------------------------------------- internals

def _mean_ratio(ratio: Ratio) -> float:
    if isinstance(ratio, (int, float)):
        return float(ratio)
    return sum(ratio.values()) / max(1, len(ratio))


def _run_identity(config: DistillConfig, sizes: Sequence[SizeSpec]) -> str:
    sizes = [[str(n), plain_ratio(r)] for n, r in sizes]
    return json.dumps(to_jsonable({"config": dataclasses.asdict(config), "sizes": sizes}), sort_keys=True)


def _check_same_run(ckpt: dict[str, Any], config: DistillConfig, sizes: Sequence[SizeSpec], path: Path) -> None:
    if not isinstance(ckpt, dict):
        raise ConfigError(f"checkpoint {path} is not a training checkpoint of this package; delete it to restart "
                          f"training, or start a new run")
    if ckpt.get("format") != _FORMAT:
        raise ConfigError(f"checkpoint {path} has format {ckpt.get('format')!r}, expected {_FORMAT}")
    if ckpt.get("run") != _run_identity(config, sizes):
        raise ConfigError(f"cannot resume from {path}: sizes or distillation settings changed since it was written")
    if not isinstance(ckpt.get("family"), dict) or "channel_order" not in ckpt["family"]:
        raise ConfigError(f"checkpoint {path} has no channel order; delete it to restart training, "
                          f"or start a new run")


def _does_not_fit(path: Path, e: BaseException) -> ConfigError:
    """A checkpoint of the same settings whose state does not fit this run's network: the assistant
    was searched differently (e.g. the study was recomputed), or the file's contents are wrong."""
    return ConfigError(f"cannot resume from checkpoint {path}: its state does not fit this run's assistant "
                       f"network ({first_line(e)}); delete it to restart training, or start a new run")


def _teacher_macs(teacher: nn.Module, example: Tensor) -> int:
    try:
        return P.count_macs(teacher, example)
    except Exception:  # an opaque (scripted) teacher cannot be traced
        log.warning("cannot count the teacher's MACs; train_flops leaves its forward passes out")
        return 0


class _Trainer:
    """State of one nested run: the things a checkpoint must restore."""

    def __init__(self, teacher: nn.Module, family: NestedFamily, data: DataSplits, cfg: DistillConfig) -> None:
        self.teacher = teacher.eval() if cfg.uses_teacher else teacher  # untouched when unused
        self.family, self.data, self.cfg = family, data, cfg
        self.ta = family.module
        example = data.x_train[:2]
        by_macs = sorted(family.names, key=lambda n: family.subnet(n).macs, reverse=True)
        self.students = [n for n in by_macs if not family.subnet(n).is_full]  # widest first
        features = bool(cfg.extra_losses)
        self.teacher_tap = FeatureTap(teacher, example, features) if cfg.uses_teacher else None
        self.taps = {n: FeatureTap(family.subnet(n).skeleton, example, features) for n in self.students}
        self.losses = self._build_losses(example)
        self.opt = torch.optim.AdamW([*self.ta.parameters(), *self.losses.parameters()], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.steps_per_epoch = max(1, len(data.x_train) // cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr,
                                                         total_steps=cfg.epochs * self.steps_per_epoch)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        calib = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(cfg.seed + 1))
        self.calib_x = data.x_train[calib[:cfg.bn_calib_samples]]
        self.macs_teacher = _teacher_macs(teacher, example[:1]) if cfg.uses_teacher else 0
        self.macs_ta = P.count_macs(self.ta, example[:1])
        self.epoch, self.flops, self.seconds = 0, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.last_models: tuple[dict[str, nn.Module], dict[str, float]] | None = None

    def _build_losses(self, example: Tensor) -> nn.ModuleDict:
        """One module per (student, zoo loss): adapters depend on the student's width."""
        losses = nn.ModuleDict()
        if not self.cfg.extra_losses:
            return losses
        with torch.no_grad():
            t_logits, t_feat = self.teacher_tap(example)
        state = named_tensors(self.ta)
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(self.cfg.seed)  # adapters start the same on every (re)start
            for n in self.students:
                s_logits, s_feat = self.taps[n](example, self.family.subnet(n).tensors(state))
                losses[n] = nn.ModuleDict({name: build_loss(name, Out(s_logits, s_feat), Out(t_logits, t_feat))
                                           for name, _ in self.cfg.extra_losses})
        return losses

    def close(self) -> None:
        for tap in [self.teacher_tap, *self.taps.values()]:
            if tap is not None:
                tap.remove()

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "run": _run_identity(self.cfg, list(self.family.ratios.items())),
                "epoch": self.epoch, "ta": self.ta.state_dict(), "losses": self.losses.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state()},
                "history": self.history, "train_flops": self.flops, "train_seconds": self.seconds,
                "family": self.family.state()}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.ta.load_state_dict(ckpt["ta"])
        self.losses.load_state_dict(ckpt["losses"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.generator.set_state(ckpt["rng"]["data"])
        self.epoch, self.history = int(ckpt["epoch"]), list(ckpt["history"])
        self.flops, self.seconds = int(ckpt["train_flops"]), float(ckpt["train_seconds"])

    # ----------------------------------------------------------------- loop
    def fit(self, ckpt_path: Path, progress: Progress | None) -> None:
        cfg = self.cfg
        task = progress.add(f"nested distil ({len(self.family.names)} sizes)",
                            total=cfg.epochs * self.steps_per_epoch) if progress else None
        if progress and self.epoch:
            progress.advance(task, self.epoch * self.steps_per_epoch)
        while self.epoch < cfg.epochs:
            start = time.perf_counter()
            self.family.train()  # the TA and the students' skeletons: batch statistics in BatchNorm
            perm = torch.randperm(len(self.data.x_train), generator=self.generator)
            total = 0.0
            for i in range(self.steps_per_epoch):
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                total += self._step(self.data.x_train[idx], self.data.y_train[idx])
                if progress:
                    progress.advance(task)
                    progress.update(task, description=f"nested distil e{self.epoch + 1}/{cfg.epochs} "
                                                      f"loss {total / (i + 1):.3f}")
            self.last_models = models, acc = self.evaluate()
            self.epoch += 1
            self.seconds += time.perf_counter() - start
            self.history.append({"epoch": self.epoch, "loss": total / self.steps_per_epoch, "val_acc": acc})
            write_torch(ckpt_path, self.state())
            if progress:
                progress.done("epoch", self.epoch, total=cfg.epochs,
                              **{f"acc_{n}": round(a, 4) for n, a in acc.items()})
                accs = " ".join(f"{n} {a:.3f}" for n, a in acc.items())
                progress.update(task, description=f"nested distil e{self.epoch}/{cfg.epochs} | {accs}")
        self.family.train(False)

    def _step(self, x: Tensor, y: Tensor) -> float:
        cfg, tau = self.cfg, self.cfg.temperature
        x = augment(x, cfg.augment, cfg.shift, self.generator)
        teacher = None
        if self.teacher_tap is not None:
            with torch.no_grad():
                teacher = Out(*self.teacher_tap(x), labels=y)
        ta_logits = self.ta(x)
        loss = cfg.ta_ce * F.cross_entropy(ta_logits, y)
        if cfg.ta_kd:
            loss = loss + cfg.ta_kd * kd_kl(ta_logits, teacher.logits, tau)
        loss.backward()
        total, soft = loss.item(), ta_logits.detach()
        state = named_tensors(self.ta)
        students = self._sandwich()
        for name in students:
            logits, feats = self.taps[name](x, self.family.subnet(name).tensors(state))
            loss = cfg.student_ce * F.cross_entropy(logits, y)
            if cfg.alpha:
                loss = loss + cfg.alpha * kd_kl(logits, soft, tau)
            if cfg.beta:
                loss = loss + cfg.beta * kd_kl(logits, teacher.logits, tau)
            for zoo, weight in cfg.extra_losses:
                loss = loss + weight * self.losses[name][zoo](Out(logits, feats, y), teacher)
            loss.backward()  # per size: activations of one size at a time
            total += loss.item()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.flops += len(x) * (self.macs_teacher + 3 * (self.macs_ta + sum(self.family.subnet(n).macs
                                                                           for n in students)))
        return total

    def _sandwich(self) -> list[str]:
        """The smallest student every step, plus `n_random_widths` others drawn at random."""
        if not self.students:
            return []
        *others, smallest = self.students
        k = min(self.cfg.n_random_widths, len(others))
        picked = torch.randperm(len(others), generator=self.generator)[:k].sort().values.tolist()
        return [others[i] for i in picked] + [smallest]

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, nn.Module], dict[str, float]]:
        """Every size extracted (dense), BatchNorm recalibrated, scored on the validation split."""
        models, acc = {}, {}
        for name in self.family.names:
            models[name] = self.family.extract(name, self.calib_x)
            acc[name] = accuracy(predict_logits(models[name], self.data.x_val), self.data.y_val)
        return models, acc
