"""A long distillation run that has stopped learning ends early, after a cooldown.

A family from random weights trains 48 epochs by default (`epochs.py`), since on hard data it is
still learning at 12. On easy data it is done long before: the demo's teacher at seed 1 picks a
CNN family from random weights whose five sizes, validated every 2 epochs, averaged 99.9 % at
epoch 16 and 99.7-100 % at every validation from there to epoch 48, while the run went on for
another 32 epochs (170 s of 270).

The rule (`PlateauRule`), for runs of at least `min_epochs`: once the one-cycle schedule is past
its peak, the run validates every `every(epochs)` epochs; when the mean validation accuracy over
the sizes has not beaten its best by more than one validation sample for `patience` validations in
a row, the rest of the schedule is replaced by a cooldown (`Cooldown`) and the run ends with it.
Only these validations count: the ones a long run adds to show progress follow the wall clock, and
a decision read from them would differ between a fast machine and a slow one.

Why a cooldown and not a stop: under one cycle the learning rate at such a plateau is still a
large share of its peak (at epoch 24 of 48, 81 %), and what a one-cycle run gains at its end it
gains from annealing that rate. The cooldown anneals it from where it is to the schedule's floor
(cosine, as the one-cycle's own annealing), with AdamW's beta1 rising to the schedule's top as one
cycle would take it, over `cooldown_epochs(epochs)` epochs: the decay phase of a
warmup-stable-decay schedule, started when validation says the stable phase is over.

A run that keeps improving runs its planned epochs, step for step as without the rule (it only
validates more often, which changes no weight and no random stream). Runs shorter than
`min_epochs` (the 12 epochs of a family cut from the teacher) are never stopped: validating often
enough to see a plateau would cost about what stopping saves.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch.optim import Optimizer

__all__ = ["Cooldown", "PlateauRule", "mean_accuracy"]


@dataclass(frozen=True)
class PlateauRule:
    """When a run counts as having stopped learning, and how it ends."""

    min_epochs: int = 24  # shorter runs are never stopped early
    patience: int = 2  # validations in a row without a new best
    every_share: float = 1 / 12  # validation cadence past the peak, as a share of the run (4 of 48 epochs)
    cooldown_share: float = 1 / 8  # the cooldown's length, as a share of the run (6 of 48 epochs)
    peak_share: float = 0.3  # where the one-cycle schedule peaks (OneCycleLR's pct_start)

    def applies(self, epochs: int) -> bool:
        return epochs >= self.min_epochs

    def every(self, epochs: int) -> int:
        return max(2, round(epochs * self.every_share))

    def cooldown_epochs(self, epochs: int) -> int:
        return max(2, math.ceil(epochs * self.cooldown_share))

    def validates(self, epoch: int, epochs: int) -> bool:
        """Whether epoch `epoch` (1-based) of a run of `epochs` validates for the rule's sake."""
        return self.applies(epochs) and epoch >= self.peak_share * epochs and epoch % self.every(epochs) == 0

    def plateaued(self, means: Sequence[float], n_val: int) -> bool:
        """Whether the last `patience` mean accuracies (of all validations so far, in order) all stay
        within one validation sample (`1 / n_val`) of the best before them."""
        if len(means) <= self.patience or n_val <= 0:
            return False
        best = max(means[:-self.patience])
        return all(m <= best + 1.0 / n_val + 1e-9 for m in means[-self.patience:])

    def cooldown(self, epoch: int, epochs: int) -> int | None:
        """The epoch a run that plateaued at epoch `epoch` ends at, or None where the cooldown would
        not end at least two epochs before the planned end (nothing worth stopping for)."""
        end = epoch + self.cooldown_epochs(epochs)
        return end if end <= epochs - 2 else None


def mean_accuracy(acc: Mapping[str, float]) -> float:
    return sum(acc.values()) / len(acc)


@dataclass(frozen=True)
class Cooldown:
    """The schedule from optimizer step `start` to `end`: the rate anneals (cosine) from `lr_share`
    of each group's one-cycle peak (`max_lr`) down to its floor (`min_lr`), and AdamW's beta1 from
    `beta1` up to the one-cycle's top (`max_momentum`). Shares of the group's own keys, so the
    divergence guard, which scales those keys on a rollback, scales the cooldown with them."""

    start: int
    end: int
    lr_share: float
    beta1: float
    plateau_epoch: int
    end_epoch: int

    @classmethod
    def begin(cls, opt: Optimizer, start: int, end: int, plateau_epoch: int, end_epoch: int) -> "Cooldown":
        group = opt.param_groups[0]
        return cls(start=start, end=end, lr_share=float(group["lr"]) / float(group["max_lr"]),
                   beta1=float(group["betas"][0]), plateau_epoch=plateau_epoch, end_epoch=end_epoch)

    def apply(self, opt: Optimizer, step: int) -> None:
        """Set every group's rate and beta1 for optimizer step `step` (the number of steps taken)."""
        t = min(1.0, max(0.0, (step - self.start) / max(1, self.end - self.start)))
        keep = (1 + math.cos(math.pi * t)) / 2  # 1 at the start, 0 at the end
        for group in opt.param_groups:
            floor = float(group["min_lr"])
            group["lr"] = floor + (self.lr_share * float(group["max_lr"]) - floor) * keep
            top = float(group.get("max_momentum", self.beta1))
            group["betas"] = (top + (self.beta1 - top) * keep, group["betas"][1])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Cooldown | None":
        return None if d is None else cls(**d)
