"""One training run for a nested family of GPT-2 sizes: teacher -> TA -> students (MatTA).

The TA is the widest size; every smaller size nests in it (`gpt.nested_forward`: a prefix of its
heads and FFN neurons, a subset of its blocks), and one optimizer step updates the shared weights. Three recipes:

`chain` (the default; MatTA's teacher -> TA -> student chain, MatFormer's sampled sizes): each
step trains ONE size, taken from a cycle of the TA once and every student `student_rounds` times
(2) in a fresh random order, so the students get equal shares and the TA half of one:

    TA:       w_ce * CE(TA, next token) + w_kd * tau^2 * KL(teacher || TA)
    student:  w_ce * CE(s, next token)  + w_ta * tau^2 * KL(TA || s)

The teacher runs only on the TA's steps, and a student's target is the TA's forward without
gradient, so a step costs about a third of training every size (BENCHMARKS.md "Language
models", benchmarks/bench_lm_matta.py: the chain's students match or beat distilling each alone
at half its compute on the 4-layer example teacher, and at the same compute, not half, on a
6-layer one whose students differ in depth and heads).

`sampled`: one size per step as in `chain`, every size taught by the teacher (no TA term):

    size:     w_ce * CE(size, next token) + w_kd * tau^2 * KL(teacher || size)

`all` (every size every step, students taught by both):

    TA:       w_ce * CE(TA, next token) + w_kd * tau^2 * KL(teacher || TA)
    student:  w_ce * CE(s, next token)  + w_kd * tau^2 * KL(teacher || s) + w_ta * tau^2 * KL(TA || s)

In each the KL is on each position's next-token distribution (token-level KD) and the TA's
target is detached (in-place distillation). With `taid`, every KL's target is TAID's
interpolation instead (`TAIDState`): from near the size's own prediction towards the target.
The family starts from the teacher's own importance-sorted weights (`gpt.sort_by_importance`),
so training repairs what the cut removed instead of learning the language from scratch (Minitron).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LM_RECIPES
from .corpus import random_windows
from .gpt import Shape, nested_forward

log = logging.getLogger(__name__)

__all__ = ["LMDistillConfig", "LMTraining", "RECIPES", "TAIDState", "token_kl", "train_nested_lm"]

RECIPES = LM_RECIPES


@dataclass(frozen=True)
class LMDistillConfig:
    steps: int = 200
    batch_size: int = 16
    context: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    temperature: float = 1.0  # LMs distil at tau 1: their next-token distributions are already soft
    w_ce: float = 0.5
    w_kd: float = 0.5  # from the teacher
    w_ta: float = 0.5  # from the TA (students only)
    warmup: int = 10
    seed: int = 0
    # chain, sampled: steps of each student per step of the TA. Two: on the example GPT-2 at half the
    # independent runs' compute (3 seeds), every student's perplexity 1.2-1.8 % lower than with one,
    # the TA's 3.6 % higher. Each student its own count (3, 2, 1 widest first) was tried on a 6-layer
    # teacher and not kept: the widest student gained 1.5 %, the smallest lost 5 % (BENCHMARKS.md)
    student_rounds: int = 2
    recipe: str = "chain"  # one size per step, students taught by the TA ("sampled": by the teacher; "all": every size every step)
    # TAID (arXiv 2501.16937): each KL's target moves from the size's own logits to the target's;
    # t starts at taid_start and rises by taid_alpha * sigmoid(momentum of the loss's relative fall),
    # never below the straight line to 1 at the last step (the paper's defaults)
    taid: bool = False
    taid_start: float = 0.4
    taid_alpha: float = 5e-4
    taid_beta: float = 0.99

    def __post_init__(self) -> None:
        if self.student_rounds < 1:
            raise ValueError(f"student_rounds must be at least 1, not {self.student_rounds}")
        if not 0.0 <= self.taid_start <= 1.0:
            raise ValueError(f"taid_start must be in [0, 1], not {self.taid_start}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")


@dataclass
class LMTraining:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per logged step: loss per size
    # what ran, for compute accounting: per size (its `name`), steps trained with gradient, and
    # forward passes without gradient (the TA's logits for a student's step; the teacher's)
    trained: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)

    def forwards_per_step(self) -> dict[str, float]:
        """Mean passes per step: `<size>` trained (forward + backward), `<size>:target` forward only."""
        out = {k: v / max(1, self.steps) for k, v in self.trained.items()}
        out.update({f"{k}:target": v / max(1, self.steps) for k, v in self.targets.items()})
        return out


@dataclass
class TAIDState:
    """TAID's time-dependent target for one size (Shing et al., ICLR 2025).

    The target's logits are (1 - t) * z_size (without gradient) + t * z_target: early on the size
    is asked for little more than it already predicts, which is what closes a large capacity gap
    without the mode averaging of a far target; t reaches 1 (the plain target) by the last step.
    How fast t rises between the two follows the loss: the momentum of its relative fall."""
    t: float
    momentum: float = 0.0
    last: float | None = None

    def target(self, logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.t) * logits.detach() + self.t * target_logits.detach()

    def update(self, loss: float, progress: float, cfg: LMDistillConfig) -> None:
        """After a step of this size at `progress` (0..1 of the run) with KL `loss`."""
        if self.last is not None:
            fall = (self.last - loss) / (abs(self.last) + 1e-8)
            self.momentum = cfg.taid_beta * self.momentum + (1.0 - cfg.taid_beta) * fall
        self.last = loss
        rise = cfg.taid_alpha * (1.0 / (1.0 + math.exp(-self.momentum))) * (1.0 - self.t)
        self.t = min(1.0, max(cfg.taid_start + (1.0 - cfg.taid_start) * progress, self.t + rise))


def name(shape: Shape) -> str:
    return f"{shape.layers}L{shape.heads}H{shape.ffn}F"


def token_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """tau^2 * KL(target || student) per token, averaged over tokens (Hinton KD at every position)."""
    s = F.log_softmax(student_logits.float() / tau, dim=-1)
    t = F.log_softmax(target_logits.detach().float() / tau, dim=-1)
    return F.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean") * tau * tau


def _kd(logits: torch.Tensor, target: torch.Tensor, taid: TAIDState | None, tau: float) -> torch.Tensor:
    """The KL towards `target`, or with TAID towards its interpolation with `logits`."""
    return token_kl(logits, taid.target(logits, target) if taid else target, tau)


def _lr(step: int, cfg: LMDistillConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_nested_lm(teacher: nn.Module, family: nn.Module, shapes: Sequence[Shape], train_ids: torch.Tensor,
                    cfg: LMDistillConfig, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> LMTraining:
    """Train every size in `shapes` (widest first: the TA) on `family`'s shared weights."""
    shapes = sorted(shapes, reverse=True)
    ta = shapes[0]
    if not all(s.nests_in(ta) for s in shapes):
        raise ValueError(f"every size must nest in the TA {ta}: {shapes}")
    gen = torch.Generator().manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)  # the order of sizes, apart from the data's draws
    torch.manual_seed(cfg.seed)
    teacher.eval()
    family.train()
    opt = torch.optim.AdamW(family.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = LMTraining(steps=cfg.steps, seconds=0.0)
    queue: list[Shape] = []
    taid = {name(s): TAIDState(cfg.taid_start) for s in shapes} if cfg.taid else {}
    start = time.perf_counter()

    def count(book: dict[str, int], key: str) -> None:
        book[key] = book.get(key, 0) + 1

    def teacher_logits(x: torch.Tensor) -> torch.Tensor:
        count(run.targets, "teacher")
        with torch.no_grad():
            return teacher(x).logits if hasattr(teacher, "config") else teacher(x)

    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        w = random_windows(train_ids, cfg.context, cfg.batch_size, gen)
        x, y = w[:, :-1], w[:, 1:]
        if cfg.recipe == "all":
            todo = shapes
        else:
            if not queue:  # a fresh random order of all sizes: each gets the same number of steps
                cycle = [ta] + list(shapes[1:]) * cfg.student_rounds
                queue = [cycle[i] for i in torch.randperm(len(cycle), generator=order_gen).tolist()]
            todo = [queue.pop()]
        t_logits = teacher_logits(x) if cfg.recipe != "chain" or todo[0] == ta else None
        opt.zero_grad(set_to_none=True)
        losses: dict[str, float] = {}
        ta_logits = None
        for s in todo:
            logits = nested_forward(family, x, s)
            count(run.trained, name(s))
            state = taid.get(name(s))
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            kd = torch.zeros((), dtype=ce.dtype)
            if t_logits is not None:
                kd = kd + cfg.w_kd * _kd(logits, t_logits, state, cfg.temperature)
            if s == ta:
                ta_logits = logits.detach()
            elif cfg.w_ta > 0 and cfg.recipe != "sampled":
                if ta_logits is None:  # chain: the TA's target for this student, no gradient
                    count(run.targets, name(ta))
                    with torch.no_grad():
                        ta_logits = nested_forward(family, x, ta)
                kd = kd + cfg.w_ta * _kd(logits, ta_logits, state, cfg.temperature)
            (cfg.w_ce * ce + kd).backward()  # size by size: only one size's activations are held at a time
            if state is not None:
                state.update(kd.item(), (step + 1) / cfg.steps, cfg)
            losses[name(s)] = ce.item()
        nn.utils.clip_grad_norm_(family.parameters(), 1.0)
        opt.step()
        if on_step is not None:
            on_step(step, losses)
        if step % 10 == 0 or step == cfg.steps - 1:
            run.history.append({"step": step, **losses, **{f"{k}:taid_t": round(v.t, 4) for k, v in taid.items()}})
    family.eval()
    run.seconds = time.perf_counter() - start
    untrained = [name(s) for s in shapes if name(s) not in run.trained]
    if untrained:  # one size per step: fewer steps than a cycle can miss a size
        log.warning("%d steps trained no step of %s (the %s recipe trains one size per step): give more steps",
                    cfg.steps, ", ".join(untrained), cfg.recipe)
    return run


def describe(shape: Shape) -> dict[str, Any]:
    return shape.to_dict()
