"""Teacher → TA → nested students, trained together in ONE run (MatTA + MatFormer).

Each step, on one (optionally augmented) batch:

1. the teacher runs once, frozen, without gradients (without augmentation its
   logits are computed once per run instead, and looked up);
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

Every epoch ends with an atomic checkpoint (`resume=True` continues from the
last one, so a run killed at any moment repeats at most the epoch it was in);
the last also with BatchNorm recalibration and validation of every size, and so
does every `eval_every`-th once a run has trained `eval_min_seconds` since its
last validation. A run of 24 or more epochs also validates every few epochs past
the schedule's peak, and ends early, after a cooldown, once those validations stop
improving (`plateau.py`).

Under torchrun (`ranks`), every rank draws the same batch, augmentation and
sandwich from the shared seeded stream and runs its strided share of the batch
(a DistributedSampler's split, per step); DistributedDataParallel averages the
gradients, so `batch_size` stays the batch of one optimizer step, whatever the
number of ranks, and the recipe (steps, schedule) is the single-process one.
Rank 0 alone validates, writes checkpoints and family weights; the others
receive its accuracies, and resume from its checkpoint, which it sends them.
`device` (cuda, say) holds everything that trains; the sizes come back as CPU
modules.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import prune as P
from ..config import SCHEDULES
from ..errors import ConfigError
from ..evaluate import accuracy, predict_logits
from ..faults import crash_point
from ..files import first_line
from ..progress import Progress
from ..ranks import Ranks
from ..types import DataSplits, StudentFamily, to_jsonable
from .augment import AUGMENTS, augment
from .bn import recalibrate_bn
from .checkpoint import load_checkpoint, write_torch
from .features import FeatureTap
from .guard import START_SAMPLES, DivergenceGuard, start_accuracy
from .losses import LOSSES, Out, build_loss, kd_kl
from .nested import NestedFamily, Ratio, SizeSpec, named_tensors, plain_ratio
from .plateau import Cooldown, PlateauRule, mean_accuracy
from .precision import PRECISIONS, guarded_step, resolve_precision, training_autocast

__all__ = ["DistillConfig", "FamilyResult", "train_family", "train_family_rank", "CHECKPOINT", "FAMILY_WEIGHTS"]

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
    # students per step besides the smallest (sandwich rule). One: on digits at lr 1e-2, 1 against 2
    # moved every size by less than the seed-to-seed spread (benchmarks/results/nested.md), and with
    # the example's four sizes it trains 2 students a step instead of 3 (a fifth of the step's time)
    n_random_widths: int = 1
    # "sandwich": every step trains the TA, the smallest and `n_random_widths` others (above);
    # "chain": every step trains ONE granularity, from a cycle of the TA once and each student
    # `student_rounds` times in a seeded random order; the teacher teaches the TA, the TA the
    # students (their KD weight alpha + beta on the TA's logits, computed without gradient), so
    # the teacher runs on the TA's steps only (MatTA's teacher -> TA -> student chain)
    schedule: str = "sandwich"
    student_rounds: int = 2
    bn_calib_samples: int = 512
    # every size is extracted, recalibrated and validated after the last epoch (those models are kept)
    # and, to show a long run's progress, every `eval_every`-th epoch once `eval_min_seconds` of training
    # passed since the last validation: one costs about half an epoch on the example (1.2 s against
    # 2.7 s), which a run of half a minute does not need to watch (validation changes no weight, no
    # random stream: skipping it leaves the run's results as they were)
    eval_every: int = 6
    eval_min_seconds: float = 30.0
    # a run of at least 24 epochs whose sizes' validation accuracy stops improving anneals its rate over
    # an eighth of its epochs and ends there (distill/plateau.py); False: every planned epoch runs
    stop_on_plateau: bool = True
    augment: str = "none"  # "shift": random translation by up to `shift` samples/pixels
    shift: int = 2
    seed: int = 0
    round_to: int = 8
    # the forward passes' arithmetic (distill/precision.py): "auto" is bfloat16 on CPUs with AMX or AVX-512 BF16,
    # float32 elsewhere. Not part of a run's identity: a run resumed on another machine may differ
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 but got {getattr(self, name)}")
        if self.eval_min_seconds < 0:
            raise ConfigError(f"eval_min_seconds must be at least 0 but got {self.eval_min_seconds}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive but got {getattr(self, name)}")
        for name in ("weight_decay", "alpha", "beta", "student_ce", "ta_ce", "ta_kd", "n_random_widths",
                     "bn_calib_samples", "shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0 but got {getattr(self, name)}")
        if self.round_to < 1:
            raise ConfigError(f"round_to must be at least 1 but got {self.round_to}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)} but got {self.schedule!r}")
        if self.student_rounds < 1:
            raise ConfigError(f"student_rounds must be at least 1 but got {self.student_rounds}")
        if self.schedule == "chain" and self.extra_losses:
            raise ConfigError("extra losses compare a student with the teacher, which the chain schedule does not "
                              "run on a student's step: use the sandwich schedule with them")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} but got {self.precision!r}")
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
    rollbacks: list[dict[str, Any]] = field(default_factory=list)  # epochs that diverged (distill.guard)
    precision: str = "fp32"  # the forward passes' arithmetic, resolved (distill/precision.py)
    # bf16 runs only: the epoch (1-based) in which the run went on in float32, after a bfloat16 step's
    # gradients were not finite (`_Trainer._step_optimizer`); None when it never happened
    precision_fallback_epoch: int | None = None
    # where validation accuracy stopped improving and the run cooled down and ended before its planned
    # epochs (distill/plateau.py): {"plateau_epoch", "epochs_run", "epochs_planned"}; None: it ran them all
    stopped_early: dict[str, int] | None = None


def train_family(teacher: nn.Module, ta: nn.Module, data: DataSplits, *, sizes: Sequence[SizeSpec],
                 config: DistillConfig = DistillConfig(), run_dir: Path, resume: bool = False,
                 progress: Progress | None = None, arch: Mapping[str, Any] | None = None,
                 groups: Sequence[P.ChannelGroup] | None = None,
                 order: Mapping[str, Sequence[int]] | None = None, device: torch.device | str = "cpu",
                 ranks: Ranks | None = None) -> FamilyResult:
    """Train `ta` (in place) and its nested `sizes` from `teacher` in one run; extract every size.

    `run_dir` receives `checkpoint.pt` (every epoch) and `family.pt` (the TA's
    weights, channel order and sizes). With `resume`, a checkpoint from the
    same run (same sizes and config, else ConfigError) is continued; the TA
    must be rebuilt by the caller from the same arch. `groups`/`order` may be
    passed when already computed (choose_sizes needs them too); a resumed run
    always uses the channel order it was trained with. `device` holds what
    trains; the teacher and TA are back on the CPU afterwards, and the sizes
    are CPU modules. Under torchrun, `ranks` is rank 0's place: every other
    rank calls `train_family_rank` with the same arguments meanwhile."""
    if ranks is not None and not ranks.is_main:
        raise ValueError(f"rank {ranks.rank} trains with train_family_rank; rank 0 alone calls train_family")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sizes = [(str(n), r) for n, r in sizes]
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    trainer = _start(teacher, ta, data, sizes, config, ckpt, ckpt_path, groups, order, device, ranks)
    try:
        trainer.fit(ckpt_path, progress)
        models, val_acc = trainer.last_models or trainer.evaluate()
    finally:
        trainer.close()  # feature hooks off the caller's teacher, which is back on the CPU
    family = trainer.family
    weights = write_torch(run_dir / FAMILY_WEIGHTS, {"ta": ta.state_dict(), **family.state()})
    student_family = StudentFamily(
        arch=dict(arch or {}), ratios=tuple(_mean_ratio(family.ratios[n]) for n in family.names),
        channel_order={k: tuple(v) for k, v in family.order.items()}, weights_path=str(weights),
        sizes={n: family.ratios[n] for n in family.names})
    return FamilyResult(family=student_family, models=models, ratios=dict(family.ratios), val_acc=val_acc,
                        history=trainer.history, train_seconds=trainer.seconds, train_flops=trainer.flops,
                        macs={n: family.subnet(n).macs for n in family.names}, rollbacks=list(trainer.guard.events),
                        precision=trainer.resolved_precision,
                        precision_fallback_epoch=trainer.fallback_epoch, stopped_early=trainer.stopped_early())


def train_family_rank(teacher: nn.Module, ta: nn.Module, data: DataSplits, *, sizes: Sequence[SizeSpec],
                      config: DistillConfig, ranks: Ranks, groups: Sequence[P.ChannelGroup] | None = None,
                      order: Mapping[str, Sequence[int]] | None = None, device: torch.device | str = "cpu") -> None:
    """A torchrun rank other than 0: train this rank's share of every batch in step with rank 0's
    `train_family` (same arguments; a resumed run continues from the checkpoint rank 0 sends).
    Rank 0 keeps every result; this rank writes nothing."""
    if ranks.is_main:
        raise ValueError("rank 0 trains with train_family, which writes the checkpoints and results")
    sizes = [(str(n), r) for n, r in sizes]
    trainer = _start(teacher, ta, data, sizes, config, None, Path(f"rank 0's {CHECKPOINT}"), groups, order, device,
                     ranks)
    try:
        trainer.fit(None, None)
    finally:
        trainer.close()


# --------------------------------------------------------------------------- internals

def _start(teacher: nn.Module, ta: nn.Module, data: DataSplits, sizes: list[SizeSpec], config: DistillConfig,
           ckpt: dict[str, Any] | None, ckpt_path: Path, groups: Sequence[P.ChannelGroup] | None,
           order: Mapping[str, Sequence[int]] | None, device: torch.device | str,
           ranks: Ranks | None) -> "_Trainer":
    """The run's trainer, continued from `ckpt` where there is one: under torchrun, rank 0's on every rank."""
    if ranks is not None:
        ckpt = ranks.broadcast(ckpt)
    if ckpt is not None:
        _check_same_run(ckpt, config, sizes, ckpt_path)
        order = ckpt["family"]["channel_order"]
    try:
        family = NestedFamily(ta, data.x_train[:2], sizes, groups=groups, order=order, round_to=config.round_to)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        if ckpt is None:
            raise
        raise _does_not_fit(ckpt_path, e) from None
    trainer = _Trainer(teacher, family, data, config, torch.device(device), ranks)
    if ckpt is not None:
        try:
            trainer.load_state(ckpt)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # another TA's weights
            trainer.close()
            raise _does_not_fit(ckpt_path, e) from None
    return trainer


def _mean_ratio(ratio: Ratio) -> float:
    if isinstance(ratio, (int, float)):
        return float(ratio)
    return sum(ratio.values()) / max(1, len(ratio))


# stop_on_plateau: whether the rest of a run may become a cooldown, not what it trained so far; a
# cooldown already begun is in the checkpoint and goes on either way, and checkpoints written before
# the rule resume under it
_NOT_IDENTITY = ("precision", "eval_every", "eval_min_seconds", "stop_on_plateau")


def _run_identity(config: DistillConfig, sizes: Sequence[SizeSpec]) -> str:
    """What a checkpoint must share with the run resuming it: the recipe and the sizes, not how the
    arithmetic ran (the precision follows the machine, and a run may be resumed on another) nor when
    it validates (validation changes no weight)."""
    sizes = [[str(n), plain_ratio(r)] for n, r in sizes]
    recipe = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IDENTITY}
    return json.dumps(to_jsonable({"config": recipe, "sizes": sizes}), sort_keys=True)


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

    def __init__(self, teacher: nn.Module, family: NestedFamily, data: DataSplits, cfg: DistillConfig,
                 device: torch.device = torch.device("cpu"), ranks: Ranks | None = None) -> None:
        if ranks is not None and cfg.batch_size < ranks.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} cannot be shared by {ranks.world_size} ranks: each "
                              f"rank needs a sample of every batch; use at least {ranks.world_size}")
        self.device, self.ranks = device, ranks
        self.main = ranks is None or ranks.is_main
        self.teacher = teacher.eval() if cfg.uses_teacher else teacher  # untouched when unused
        self.family, self.data, self.cfg = family, data, cfg
        self.ta = family.module
        example = data.x_train[:2]
        # the TA is checked, not the teacher: the untrusted shape's bfloat16 forward pass was sound
        self.precision, why = resolve_precision(cfg.precision, device, [(self.ta, example)])
        log.info("distillation's forward passes in %s (%s)", self.precision, why)
        self.resolved_precision = self.precision
        self.fallback_epoch: int | None = None  # where a bfloat16 run went on in float32 (`_step_optimizer`)
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
        self.step_index = 0  # optimizer steps taken: the chain's position (restored from `epoch` on resume)
        self.history: list[dict[str, Any]] = []
        # a long run that stops improving cools down and ends early (distill/plateau.py)
        self.plateau = PlateauRule() if cfg.stop_on_plateau else None
        self.cooldown: Cooldown | None = None
        # an epoch whose loss is not finite or whose TA's training accuracy collapses goes back, at a lower rate
        self.guard = DivergenceGuard(chance=1.0 / max(1, data.num_classes))
        self.hits = torch.zeros(2, dtype=torch.long)  # the TA's correct answers and samples this epoch
        self.last_models: tuple[dict[str, nn.Module], dict[str, float]] | None = None
        if device.type != "cpu":  # built on the CPU above (taps and MAC counts trace CPU examples), moved whole
            self._place(device)
        # Images train channels-last: the CPU's convolutions (oneDNN) run the teacher's forward and the
        # TA's forward+backward about a quarter faster in NHWC on the example (AVX-512 and AVX2 alike use
        # the same kernels' NHWC path); the arithmetic is the same up to float rounding. The caller's
        # teacher and TA get their own layout back in `close`.
        self.memory_format = torch.channels_last if example.dim() == 4 else None
        self._set_format(self.memory_format)
        self.net: nn.Module = _Granularities(self.ta, self.losses, family, self.taps, cfg, self.memory_format,
                                             self._autocast)
        self.teacher_cache: Tensor | None = None  # the teacher's logits per training sample (`_cache_teacher`)
        if ranks is not None:
            # Buffers are synchronised once, here, and never again: the only buffers, BatchNorm
            # statistics, are recalibrated on the same samples before any size is evaluated or kept.
            # Unused parameters: each step trains some sizes only, so the other sizes' loss adapters
            # have no gradient (nor do they on one process: AdamW skips them alike); every student
            # gathers all of the TA's tensors, so otherwise only a TA with idle parameters has any.
            unused = bool(self.losses) or _idle_parameters(self.ta, example.to(device))
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, find_unused_parameters=unused,
                                                                 forward_sync_buffers=False)

    def _place(self, device: torch.device) -> None:
        """What trains, onto `device`: teacher, TA, loss adapters, the sizes' skeletons and indices."""
        if self.teacher_tap is not None:
            self.teacher_tap.to(device)
        self.ta.to(device)
        self.losses.to(device)
        for name in self.family.names:
            self.family.subnet(name).to(device)
        for tap in self.taps.values():
            tap.to(device)
        self.calib_x = self.calib_x.to(device)

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

    def _set_format(self, memory_format: torch.memory_format | None) -> None:
        """The teacher's and the TA's 4-D weights into `memory_format` (None: leave them as they are).
        Parameters keep their identity (the optimizer's and the taps' references stay valid)."""
        if memory_format is None:
            return
        for module in (self.teacher if self.teacher_tap is not None else None, self.ta):
            if module is not None and not isinstance(module, torch.jit.ScriptModule):
                module.to(memory_format=memory_format)

    def _inputs(self, x: Tensor) -> Tensor:
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def close(self) -> None:
        for tap in [self.teacher_tap, *self.taps.values()]:
            if tap is not None:
                tap.remove()
        self._set_format(torch.contiguous_format if self.memory_format is not None else None)
        if self.device.type != "cpu":  # the caller's teacher and TA go back where they came from
            self._place(torch.device("cpu"))

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "run": _run_identity(self.cfg, list(self.family.ratios.items())),
                "epoch": self.epoch, "ta": self.ta.state_dict(), "losses": self.losses.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state()},
                "history": self.history, "train_flops": self.flops, "train_seconds": self.seconds,
                "family": self.family.state(), "guard": self.guard.state(),
                "cooldown": None if self.cooldown is None else self.cooldown.to_dict()}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self._load_training(ckpt)
        self.flops, self.seconds = int(ckpt["train_flops"]), float(ckpt["train_seconds"])
        self.guard.load_state(ckpt.get("guard"))  # absent from checkpoints written before the guard

    def _load_training(self, state: dict[str, Any]) -> None:
        """Weights, optimizer, schedule position, random streams and the epochs done, from `state`."""
        self.ta.load_state_dict(state["ta"])
        self.losses.load_state_dict(state["losses"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.cooldown = Cooldown.from_dict(state.get("cooldown"))  # absent from checkpoints before the rule

    def _go_back(self, state: dict[str, Any]) -> None:
        """An earlier state restored by the divergence guard: the time and compute the diverged epoch
        took stay counted, and the guard keeps its own record."""
        self._load_training(state)
        self.last_models = None  # validated before the divergence, if at all: evaluated again at the end

    # ----------------------------------------------------------------- loop
    def fit(self, ckpt_path: Path | None, progress: Progress | None) -> None:
        cfg = self.cfg
        task = progress.add(f"nested distil ({len(self.family.names)} sizes)",
                            total=self.end_epoch * self.steps_per_epoch) if progress else None
        if progress and self.epoch:
            progress.advance(task, self.epoch * self.steps_per_epoch)
        if self.epoch < self.end_epoch:
            self._cache_teacher()
        self.step_index = self.epoch * self.steps_per_epoch
        first = None  # a resumed run's guard holds its best accuracy already
        if self.epoch == 0 and self.epoch < self.end_epoch:
            first = start_accuracy(self.ta, self._inputs(self.data.x_train[:START_SAMPLES].to(self.device)),
                                   self.data.y_train[:START_SAMPLES].to(self.device))
        self.guard.start(self.state(), self.epoch, first)
        self.since_validation = 0.0  # training seconds since the last validation (or this call)
        while self.epoch < self.end_epoch:
            start = time.perf_counter()
            self.family.train()  # the TA and the students' skeletons: batch statistics in BatchNorm
            perm = torch.randperm(len(self.data.x_train), generator=self.generator)
            total = 0.0
            self.hits = torch.zeros(2, dtype=torch.long, device=self.device)
            for i in range(self.steps_per_epoch):
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                total += self._step(idx)
                if progress:
                    progress.advance(task)
                    progress.update(task, description=f"nested distil e{self.epoch + 1}/{self.end_epoch} "
                                                      f"loss {total / (i + 1):.3f}")
            loss, ta_acc = self._agree(total / self.steps_per_epoch)
            if self.guard.diverged(loss, ta_acc):  # every rank holds the same figures: they all go back together
                self.seconds += time.perf_counter() - start
                event = self.guard.rollback(loss, ta_acc, self.epoch + 1, self._go_back, self.opt)
                log.warning("%s", self.guard.describe(event))
                if self.main:
                    write_torch(ckpt_path, self.state())
                    if progress:
                        progress.update(task, completed=self.epoch * self.steps_per_epoch)
                self.step_index = self.epoch * self.steps_per_epoch
                continue
            acc: dict[str, float] | None = None
            self.since_validation += time.perf_counter() - start
            if self.main and self._validates(self.epoch + 1):
                self.last_models = models, acc = self.evaluate()
                self.since_validation = 0.0
            self.epoch += 1
            took = time.perf_counter() - start
            self.seconds += took
            if self.main:
                self.history.append({"epoch": self.epoch, "loss": loss, "val_acc": acc, "seconds": round(took, 3)})
                self._cool_down_if_flat(progress, task)  # before the checkpoint: a resumed run cools down alike
                write_torch(ckpt_path, self.state())
                if progress:
                    progress.done("epoch", self.epoch, total=self.end_epoch,
                                  **{f"acc_{n}": round(a, 4) for n, a in (acc or {}).items()})
                    if acc is not None:
                        accs = " ".join(f"{n} {a:.3f}" for n, a in acc.items())
                        progress.update(task, description=f"nested distil e{self.epoch}/{self.end_epoch} | {accs}")
            if self.ranks is not None:
                # sent once rank 0's checkpoint and journal line are on disk: a rank killed from here on
                # costs no finished epoch, and the journal lists it
                acc = self.ranks.broadcast(acc)
                if not self.main:
                    self.history.append({"epoch": self.epoch, "loss": loss, "val_acc": acc, "seconds": round(took, 3)})
                    self._cool_down_if_flat(None, None)  # the same history as rank 0's: the same decision
                    crash_point("epoch")  # rank 0 passes it in its journal (progress.done)
            self.guard.keep(loss, ta_acc, self.state, self.epoch)
        self.family.train(False)

    def _cache_teacher(self) -> None:
        """Without augmentation the teacher sees the same samples every epoch, so its logits are
        computed once, here, rather than on every step (12 epochs: 12 teacher passes become 1; the
        transformer recipe trains without augmentation). Feature losses need the teacher's feature
        maps as well, which are not kept: those runs call the teacher every step."""
        cfg = self.cfg
        if self.teacher_tap is None or cfg.extra_losses or (cfg.augment != "none" and cfg.shift > 0):
            return
        with torch.no_grad(), self._autocast():
            self.teacher_cache = torch.cat([
                self.teacher_tap(self._inputs(self.data.x_train[i:i + 256].to(self.device)))[0].float()
                for i in range(0, len(self.data.x_train), 256)])
        self.flops += len(self.data.x_train) * self.macs_teacher

    def _step(self, idx: Tensor) -> float:
        """One optimizer step on the training samples `idx`; returns the summed loss."""
        cfg, batch = self.cfg, len(idx)
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        # every rank draws the whole batch's augmentation and sandwich: the seeded stream stays one
        x = augment(x, cfg.augment, cfg.shift, self.generator)
        if cfg.schedule == "chain":
            return self._chain_step(idx, x, y)
        students = self._sandwich()
        x, y, cached, share = self._this_rank(idx, x, y)
        teacher = self._teacher(x, y, cached)
        total, soft = 0.0, None
        granularities = [None, *students]  # None: the TA, whose output the students learn from
        for i, name in enumerate(granularities):
            # gradients are averaged across ranks once, on the step's last backward pass
            last = i == len(granularities) - 1
            with contextlib.nullcontext() if self.ranks is None or last else self.net.no_sync():
                loss, logits = self.net(name, x, y, teacher, soft)
                (loss if share == 1.0 else loss * share).backward()  # per size: one size's activations at a time
            if name is None:
                soft = logits.detach()
                self._count_hits(soft, y)
            total += loss.item() * share
        self._step_optimizer()
        self.opt.zero_grad(set_to_none=True)
        self.step_index += 1
        self._schedule_step()
        teacher_macs = 0 if cached is not None else self.macs_teacher  # cached: counted once, in _cache_teacher
        self.flops += batch * (teacher_macs + 3 * (self.macs_ta + sum(self.family.subnet(n).macs for n in students)))
        return total

    def _count_hits(self, logits: Tensor, y: Tensor) -> None:
        """The TA's correct answers on its training batch, this epoch (the divergence guard's signal)."""
        with torch.no_grad():
            self.hits += torch.stack([(logits.argmax(1) == y).sum(), torch.tensor(len(y), device=y.device)])

    def _this_rank(self, idx: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None, float]:
        """This rank's part of the batch (all of it on one process) on the device, the teacher's cached
        logits for it, and the weight of its loss."""
        batch = len(idx)
        cached = None if self.teacher_cache is None else self.teacher_cache[idx.to(self.teacher_cache.device)]
        share = 1.0
        if self.ranks is not None:
            x, y = x[self.ranks.rank::self.ranks.world_size], y[self.ranks.rank::self.ranks.world_size]
            cached = None if cached is None else cached[self.ranks.rank::self.ranks.world_size]
            # DDP averages the ranks' gradients; weighing each by its share of the batch makes that
            # average the whole batch's mean when the batch does not split evenly
            share = len(x) * self.ranks.world_size / batch
        return self._inputs(x.to(self.device)), y.to(self.device), cached, share

    def _teacher(self, x: Tensor, y: Tensor, cached: Tensor | None) -> Out | None:
        """The teacher's output on `x`: looked up when cached, else run without gradients."""
        if cached is not None:
            return Out(cached, None, labels=y)
        if self.teacher_tap is None:
            return None
        with torch.no_grad(), self._autocast():
            logits, feats = self.teacher_tap(x)
        return Out(logits.float(), None if feats is None else feats.float(), labels=y)

    def _step_optimizer(self) -> None:
        """The optimizer's step, unless a bfloat16 step's gradients are not finite (a oneDNN bfloat16
        kernel returned NaN gradients under a finite loss, `precision.py`): then it is skipped and the
        run goes on in float32 from this epoch. In float32 every step is taken; the divergence guard
        judges the epoch."""
        before = self.precision
        self.precision = guarded_step(self.opt, self.precision, "distillation")
        if self.precision != before:
            self.fallback_epoch = self.epoch + 1

    def _autocast(self) -> contextlib.AbstractContextManager:
        return training_autocast(self.precision, self.device)

    def _chain_step(self, idx: Tensor, x: Tensor, y: Tensor) -> float:
        """One optimizer step of the chain schedule: the granularity this step trains, and only it."""
        batch = len(idx)
        name = self._chain_turn(self.step_index)
        self.step_index += 1
        x, y, cached, share = self._this_rank(idx, x, y)
        teacher = soft = None
        if name is None:
            teacher = self._teacher(x, y, cached)
            self.flops += batch * ((0 if cached is not None else self.macs_teacher) + 3 * self.macs_ta)
        else:
            with torch.no_grad(), self._autocast():
                soft = self.ta(x).float()  # the student's teacher: the TA as it is now, in training mode like the student
            self.flops += batch * (self.macs_ta + 3 * self.family.subnet(name).macs)
        loss, logits = self.net(name, x, y, teacher, soft)
        if name is None:
            self._count_hits(logits, y)
        (loss if share == 1.0 else loss * share).backward()
        self._step_optimizer()
        self.opt.zero_grad(set_to_none=True)
        self._schedule_step()
        return loss.item() * share

    def _chain_turn(self, step: int) -> str | None:
        """The granularity (None: the TA) the chain trains at optimizer step `step`: cycles of the TA
        once and each student `student_rounds` times, each cycle in its own seeded order, so a
        resumed run takes the same turns without storing any."""
        cycle: list[str | None] = [None, *self.students * self.cfg.student_rounds]
        k, pos = divmod(step, len(cycle))
        order = torch.randperm(len(cycle), generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + k))
        return cycle[int(order[pos])]

    def _validates(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) ends with validation: the last, every `eval_every`-th
        once `eval_min_seconds` of training passed since the last validation, and those the plateau
        rule reads."""
        cfg = self.cfg
        return (epoch == self.end_epoch
                or (epoch % cfg.eval_every == 0 and self.since_validation >= cfg.eval_min_seconds)
                or (self.plateau is not None and self.cooldown is None and self.plateau.validates(epoch, cfg.epochs)))

    @property
    def end_epoch(self) -> int:
        """The epoch the run ends at: the planned last, or the cooldown's end."""
        return self.cfg.epochs if self.cooldown is None else self.cooldown.end_epoch

    def _schedule_step(self) -> None:
        """The next step's learning rate: the one-cycle schedule's, or the cooldown's once it began."""
        if self.cooldown is None:
            self.sched.step()
        else:
            self.cooldown.apply(self.opt, self.step_index)

    def _cool_down_if_flat(self, progress: Progress | None, task: int | None) -> None:
        """After an epoch that validated: where the sizes' mean accuracy has stopped improving
        (`PlateauRule`), the rest of the run becomes a cooldown that ends it early."""
        rule, cfg = self.plateau, self.cfg
        if rule is None or self.cooldown is not None or not self.history or self.history[-1]["val_acc"] is None \
                or not rule.applies(cfg.epochs) or self.epoch < rule.peak_share * cfg.epochs:
            return
        # the rule's own validations only: those the time-based cadence adds depend on the machine's speed,
        # and the decision must not (a run gives the same result on a fast machine and a slow one)
        means = [mean_accuracy(h["val_acc"]) for h in self.history
                 if h.get("val_acc") and rule.validates(int(h["epoch"]), cfg.epochs)]
        end = rule.cooldown(self.epoch, cfg.epochs)
        if end is None or not rule.plateaued(means, len(self.data.y_val)):
            return
        self.cooldown = Cooldown.begin(self.opt, self.epoch * self.steps_per_epoch, end * self.steps_per_epoch,
                                       plateau_epoch=self.epoch, end_epoch=end)
        said = (f"distillation: validation accuracy flat for {rule.patience} validations (mean over the sizes "
                f"{means[-1]:.3f}, best {max(means):.3f}): the learning rate cools down over epochs {self.epoch + 1}-{end} "
                f"and the run ends there, {end} of {cfg.epochs} planned (--no-early-stop runs them all)")
        log.info("%s", said)
        if progress is not None and task is not None:
            progress.log(said)
            progress.update(task, total=end * self.steps_per_epoch)

    def stopped_early(self) -> dict[str, int] | None:
        """Where the run cooled down and ended before its planned epochs; None if it ran them all."""
        c = self.cooldown
        return None if c is None else {"plateau_epoch": c.plateau_epoch, "epochs_run": c.end_epoch,
                                       "epochs_planned": self.cfg.epochs}

    def _agree(self, loss: float) -> tuple[float, float | None]:
        """The epoch's loss and the TA's training accuracy (None: the TA took no step) over every
        rank's share, once every rank is seen to hold the same weights (equal averaged gradients and
        optimizer steps keep them equal: a difference is a bug, and evaluating rank 0's weights alone
        would hide it)."""
        correct, seen = (int(v) for v in self.hits.tolist())
        if self.ranks is None:
            return loss, (correct / seen if seen else None)
        with torch.no_grad():
            fingerprint = float(sum(p.detach().double().sum() for p in self.net.parameters()))
        gathered = self.ranks.gather((loss, fingerprint, correct, seen))
        prints = [g[1] for g in gathered]
        if not all(math.isclose(f, prints[0], rel_tol=1e-6, abs_tol=1e-9) for f in prints):
            raise RuntimeError(f"the ranks' weights differ after epoch {self.epoch + 1} (parameter sums {prints})")
        correct, seen = sum(g[2] for g in gathered), sum(g[3] for g in gathered)
        return sum(g[0] for g in gathered) / len(gathered), (correct / seen if seen else None)

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
        """Every size extracted (dense), BatchNorm recalibrated, scored on the validation split;
        on the training device, and returned as CPU modules."""
        models, acc = {}, {}
        x_val = self._inputs(self.data.x_val.to(self.device))
        for name in self.family.names:
            # in the training layout: an extracted size's weights are gathered contiguous, and with
            # channels-last inputs oneDNN reorders them on every convolution. Converted, the example's
            # sizes recalibrate and predict in about 0.6x the time (measured on an AVX-512 host; the
            # same arithmetic up to float rounding)
            model = self.family.extract(name)
            if self.memory_format is not None:
                model = model.to(memory_format=self.memory_format)
            recalibrate_bn(model, self._inputs(self.calib_x))
            acc[name] = accuracy(predict_logits(model.eval(), x_val).cpu(), self.data.y_val)
            models[name] = model.cpu().to(memory_format=torch.contiguous_format)  # exported as usual
        return models, acc


def _idle_parameters(model: nn.Module, example: Tensor) -> bool:
    """Whether a training pass of `model` leaves some parameter without a gradient (checked on a copy)."""
    probe = copy.deepcopy(model).train()
    probe(example).float().sum().backward()
    return any(p.grad is None for p in probe.parameters() if p.requires_grad)


class _Granularities(nn.Module):
    """One granularity's loss per call: the TA's (`name` None) or a nested student's, run sliced
    from the TA's tensors. A module, so that DistributedDataParallel sees every pass whose
    gradients it must average across ranks (the students' passes included)."""

    def __init__(self, ta: nn.Module, losses: nn.ModuleDict, family: NestedFamily, taps: Mapping[str, FeatureTap],
                 cfg: DistillConfig, memory_format: torch.memory_format | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        super().__init__()
        self.ta, self.losses = ta, losses  # what trains: the TA and the zoo losses' adapters
        self.family, self.taps, self.cfg = family, dict(taps), cfg
        self.memory_format = memory_format
        self.autocast = autocast  # the networks' passes only: every loss is formed in float32

    def _student_tensors(self, name: str) -> dict[str, Tensor]:
        """Size `name`'s tensors gathered from the TA's, 4-D ones in the training layout: a gather
        (index_select) of a channels-last weight comes back contiguous, and oneDNN then reorders it on
        every convolution; converted here, a student's forward+backward runs about a fifth faster
        (measured on the example's sizes on an AVX-512 host), the arithmetic the same up to float rounding."""
        tensors = self.family.subnet(name).tensors(named_tensors(self.ta))
        if self.memory_format is None:
            return tensors
        return {k: t.contiguous(memory_format=self.memory_format) if t.dim() == 4 else t for k, t in tensors.items()}

    def forward(self, name: str | None, x: Tensor, y: Tensor, teacher: Out | None,
                soft: Tensor | None) -> tuple[Tensor, Tensor]:
        cfg, tau = self.cfg, self.cfg.temperature
        if name is None:
            with self.autocast():
                logits = self.ta(x).float()
            loss = cfg.ta_ce * F.cross_entropy(logits, y)
            if cfg.ta_kd:
                loss = loss + cfg.ta_kd * kd_kl(logits, teacher.logits, tau)
            return loss, logits
        with self.autocast():
            logits, feats = self.taps[name](x, self._student_tensors(name))
        logits, feats = logits.float(), None if feats is None else feats.float()
        loss = cfg.student_ce * F.cross_entropy(logits, y)
        if cfg.schedule == "chain":  # taught by the TA alone, with the whole KD weight
            return loss + (cfg.alpha + cfg.beta) * kd_kl(logits, soft, tau), logits
        if cfg.alpha:
            loss = loss + cfg.alpha * kd_kl(logits, soft, tau)
        if cfg.beta:
            loss = loss + cfg.beta * kd_kl(logits, teacher.logits, tau)
        for zoo, weight in cfg.extra_losses:
            loss = loss + weight * self.losses[name][zoo](Out(logits, feats, y), teacher)
        return loss, logits
