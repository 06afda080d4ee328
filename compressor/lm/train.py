"""One training run for a nested family of GPT-2 sizes: teacher -> TA -> students (MatTA).

The TA is the widest size; every smaller size is a prefix of it (`gpt.nested_forward`).
Each step draws one batch of token windows and sums, over the sizes (MatFormer: one
optimizer step for all of them):

    TA:       w_ce * CE(TA, next token) + w_kd * tau^2 * KL(teacher || TA)
    student:  w_ce * CE(s, next token)  + w_kd * tau^2 * KL(teacher || s) + w_ta * tau^2 * KL(TA || s)

with the KL on each position's next-token distribution (token-level KD) and the TA's target
detached (in-place distillation). The family starts from the teacher's own importance-sorted
weights (`gpt.sort_by_importance`), so training repairs what the cut removed instead of
learning the language from scratch (Minitron).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .corpus import random_windows
from .gpt import Shape, nested_forward

__all__ = ["LMDistillConfig", "LMTraining", "token_kl", "train_nested_lm"]


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


@dataclass
class LMTraining:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per logged step: loss per size


def token_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """tau^2 * KL(target || student) per token, averaged over tokens (Hinton KD at every position)."""
    s = F.log_softmax(student_logits.float() / tau, dim=-1)
    t = F.log_softmax(target_logits.detach().float() / tau, dim=-1)
    return F.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean") * tau * tau


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
    torch.manual_seed(cfg.seed)
    teacher.eval()
    family.train()
    opt = torch.optim.AdamW(family.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        w = random_windows(train_ids, cfg.context, cfg.batch_size, gen)
        x, y = w[:, :-1], w[:, 1:]
        with torch.no_grad():
            t_logits = teacher(x).logits if hasattr(teacher, "config") else teacher(x)
        opt.zero_grad(set_to_none=True)
        losses: dict[str, float] = {}
        ta_logits = None
        for i, s in enumerate(shapes):
            logits = nested_forward(family, x, s)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss = cfg.w_ce * ce + cfg.w_kd * token_kl(logits, t_logits, cfg.temperature)
            if i == 0:
                ta_logits = logits.detach()
            else:
                loss = loss + cfg.w_ta * token_kl(logits, ta_logits, cfg.temperature)
            loss.backward()  # size by size: only one size's activations are held at a time
            losses[f"{s.layers}L{s.heads}H{s.ffn}F"] = ce.item()
        nn.utils.clip_grad_norm_(family.parameters(), 1.0)
        opt.step()
        if on_step is not None:
            on_step(step, losses)
        if step % 10 == 0 or step == cfg.steps - 1:
            history.append({"step": step, **losses})
    family.eval()
    return LMTraining(steps=cfg.steps, seconds=time.perf_counter() - start, history=history)


def describe(shape: Shape) -> dict[str, Any]:
    return shape.to_dict()
