"""Distil one student from the teacher: temperature KD plus cross-entropy (Hinton et al.).
The teacher's logits are computed once, in float32; the student's training passes run in
`KDConfig.precision` (bfloat16 on a CPU with AMX or AVX-512 BF16 under "auto", as nested distillation)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..evaluate import accuracy, predict_logits
from ..progress import Progress
from ..types import DataSplits
from .guard import START_SAMPLES, DivergenceGuard, start_accuracy
from .losses import kd_kl
from .precision import guarded_step, resolve_precision, training_autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KDConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha on labels
    seed: int = 0
    precision: str = "auto"  # the student's forward passes in training (distill/precision.py)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, t: float, alpha: float) -> torch.Tensor:
    return alpha * kd_kl(student, teacher, t) + (1 - alpha) * F.cross_entropy(student, y)


def distill_single(student: nn.Module, teacher: nn.Module, data: DataSplits, cfg: KDConfig,
                   progress: Progress | None = None, label: str = "distil",
                   device: torch.device | str = "cpu") -> list[dict]:
    """Train `student` in place on `device`; returns per-epoch history (loss, val accuracy).
    The student ends on the CPU, where it is exported. An epoch whose training accuracy collapses
    is rolled back and run again at a lower learning rate (`guard.DivergenceGuard`)."""
    device = torch.device(device)
    precision, why = resolve_precision(cfg.precision, device, [(student, data.x_train[:2])])
    log.info("%s: the student's forward passes in %s (%s)", label, precision, why)
    g = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cpu":
        teacher_logits = predict_logits(teacher, data.x_train)  # the teacher is frozen: compute once
    else:
        teacher_logits = predict_logits(teacher.to(device), data.x_train.to(device)).cpu()
        teacher.cpu()
    student.to(device)
    x_val = data.x_val.to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, len(data.x_train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    history: list[dict] = []
    task = progress.add(label, total=steps) if progress else None
    # an epoch whose loss is not finite or whose training accuracy collapses goes back, at a lower rate
    guard = DivergenceGuard(chance=1.0 / max(1, data.num_classes))
    epoch = 0

    def state() -> dict:
        return {"student": student.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": g.get_state(), "epoch": epoch, "history": history}

    def go_back(saved: dict) -> None:
        nonlocal epoch, history
        student.load_state_dict(saved["student"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        g.set_state(saved["rng"])
        epoch, history = saved["epoch"], saved["history"]

    guard.start(state(), epoch, start_accuracy(student, data.x_train[:START_SAMPLES].to(device),
                                                data.y_train[:START_SAMPLES].to(device)))
    while epoch < cfg.epochs:
        student.train()
        perm = torch.randperm(len(data.x_train), generator=g)
        total = 0.0
        n = correct = seen = 0
        for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            with training_autocast(precision, device):
                logits = student(data.x_train[idx].to(device))
            logits, y = logits.float(), data.y_train[idx].to(device)
            loss = kd_loss(logits, teacher_logits[idx].to(device), y, cfg.temperature, cfg.alpha)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            precision = guarded_step(opt, precision, label)
            sched.step()
            total += loss.item()
            n += 1
            if progress:
                progress.advance(task)
        mean, train_acc = total / max(1, n), (correct / seen if seen else None)
        if guard.diverged(mean, train_acc):
            log.warning("%s: %s", label, guard.describe(guard.rollback(mean, train_acc, epoch + 1, go_back, opt)))
            if progress:
                progress.update(task, completed=epoch * max(1, len(data.x_train) // cfg.batch_size))
            continue
        acc = accuracy(predict_logits(student, x_val).cpu(), data.y_val)
        epoch += 1
        history.append({"epoch": epoch, "loss": mean, "val_acc": acc})
        guard.keep(mean, train_acc, state, epoch)
        if progress:
            progress.update(task, description=f"{label} acc {acc:.3f}")
    student.cpu().eval()
    return history
