"""Distil one student from the teacher: temperature KD plus cross-entropy (Hinton et al.)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..evaluate import accuracy, predict_logits
from ..progress import Progress
from ..types import DataSplits
from .losses import kd_kl


@dataclass(frozen=True)
class KDConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha on labels
    seed: int = 0


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, t: float, alpha: float) -> torch.Tensor:
    return alpha * kd_kl(student, teacher, t) + (1 - alpha) * F.cross_entropy(student, y)


def distill_single(student: nn.Module, teacher: nn.Module, data: DataSplits, cfg: KDConfig,
                   progress: Progress | None = None, label: str = "distil",
                   device: torch.device | str = "cpu") -> list[dict]:
    """Train `student` in place on `device`; returns per-epoch history (loss, val accuracy).
    The student ends on the CPU, where it is exported."""
    device = torch.device(device)
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
    history = []
    task = progress.add(label, total=steps) if progress else None
    for epoch in range(cfg.epochs):
        student.train()
        perm = torch.randperm(len(data.x_train), generator=g)
        total = 0.0
        n = 0
        for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = kd_loss(student(data.x_train[idx].to(device)), teacher_logits[idx].to(device),
                           data.y_train[idx].to(device), cfg.temperature, cfg.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            n += 1
            if progress:
                progress.advance(task)
        acc = accuracy(predict_logits(student, x_val).cpu(), data.y_val)
        history.append({"epoch": epoch + 1, "loss": total / max(1, n), "val_acc": acc})
        if progress:
            progress.update(task, description=f"{label} acc {acc:.3f}")
    student.cpu().eval()
    return history
