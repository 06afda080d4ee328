"""What a proxy is given besides the candidate: the batch, the teacher's signals, a reference pool.

A study ends each trial with one number, yet DisWOT's two terms differ by orders
of magnitude and must be normalised *across candidates* before they are added.
`Reference` solves this for Optuna: the raw terms of a small pool of random
candidates are measured once at study start and stored in the study, and every
later trial is normalised against that fixed pool. Workers sharing the study and
resumed runs therefore score the same network the same way, and a trial's score
never changes after it is told.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, integer labels)
NormMode = Literal["rank", "minmax"]


def labelled_batch(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0) -> Batch:
    """One fixed batch of real samples, class-balanced: ``size // K`` of every class (fewer
    if a class has fewer), the rest drawn at random, all seeded.

    Balance matters for the semantic term: each class's gradient row averages that
    class's samples, and with ~6 samples a class a random 64-batch leaves some rows
    resting on 2 or 3 (measured: the semantic term's τ varied 0.09-0.35 over seeds with
    random batches, 0.28-0.42 with balanced ones)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per_class = max(1, size // len(classes))
    picked = [idx[torch.randperm(len(idx), generator=g)[:per_class]]
              for idx in (torch.nonzero(y == c).flatten() for c in classes)]
    chosen = torch.cat(picked)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[chosen] = False
    fill = torch.nonzero(rest).flatten()
    chosen = torch.cat([chosen, fill[torch.randperm(len(fill), generator=g)[:max(0, size - len(chosen))]]])
    chosen = chosen[torch.randperm(len(chosen), generator=g)]
    return x[chosen], y[chosen]


@dataclass(frozen=True)
class Reference:
    """Raw proxy terms of a reference pool; maps a raw value onto the pool's scale.

    ``rank``: the pool's empirical CDF, interpolated linearly between pool values and
    extended linearly past the ends (so it stays strictly monotone and never ties).
    ``minmax``: ``(x - min) / (max - min)`` of the pool. Applied to the pool itself, rank
    gives average ranks scaled to [0, 1], as in DisWOT's rank normalisation.
    """

    values: Mapping[str, tuple[float, ...]]
    mode: NormMode = "rank"

    def __post_init__(self) -> None:
        if self.mode not in ("rank", "minmax"):
            raise ValueError(f"normalisation mode must be 'rank' or 'minmax' but got {self.mode!r}.")

    @classmethod
    def from_terms(cls, pool: Iterable[Mapping[str, float]], mode: NormMode = "rank") -> "Reference":
        columns: dict[str, list[float]] = {}
        for terms in pool:
            for k, v in terms.items():
                if np.isfinite(v):
                    columns.setdefault(k, []).append(float(v))
        return cls({k: tuple(sorted(v)) for k, v in columns.items()}, mode)

    def normalise(self, term: str, value: float) -> float:
        """`value` on the pool's scale; a term the pool lacks is returned unchanged."""
        pool = np.asarray(self.values.get(term, ()), dtype=np.float64)
        if len(pool) == 0:
            return float(value)
        lo, hi = float(pool[0]), float(pool[-1])
        if hi <= lo:  # a constant pool carries no scale: measure from it in its own units
            return float(value - lo) / (abs(lo) or 1.0)
        if self.mode == "minmax":
            return float((value - lo) / (hi - lo))
        xs, inverse = np.unique(pool, return_inverse=True)
        ranks = np.bincount(inverse, weights=np.arange(len(pool))) / np.bincount(inverse)
        ys = ranks / (len(pool) - 1)
        # past the pool, continue at the pool's mean slope: the end segment's own slope can be
        # steep (two close values) and would let one term swamp the others
        if value < xs[0]:
            return float(ys[0] + (value - xs[0]) / (hi - lo))
        if value > xs[-1]:
            return float(ys[-1] + (value - xs[-1]) / (hi - lo))
        return float(np.interp(value, xs, ys))

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "values": {k: list(v) for k, v in self.values.items()}}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Reference":
        return cls({k: tuple(float(x) for x in v) for k, v in obj["values"].items()}, obj.get("mode", "rank"))


@dataclass(frozen=True)
class DisWOTSignals:
    """What DisWOT compares between two randomly initialised networks on one batch."""

    class_gram: torch.Tensor  # K x K, cosine similarities of the classes' classifier-weight gradients
    batch_gram: torch.Tensor  # B x B, row-normalised Gram of the last feature map
    cam: torch.Tensor | None = None  # B x S, each sample's class-activation map on a common grid


@dataclass(frozen=True)
class TeacherContext:
    """Per-study state shared by every proxy call; computed once, not per candidate.

    `seed` fixes every random initialisation: the teacher is initialised with `seed`,
    candidates with ``seed + 1`` (two independent draws, as DisWOT's teacher and
    student are; with one seed a full-width copy of the teacher would be identical
    to it and score a spurious perfect zero).
    """

    seed: int = 0
    batch_size: int | None = None
    teacher: DisWOTSignals | None = None
    reference: Reference | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_reference(self, reference: Reference | None) -> "TeacherContext":
        return replace(self, reference=reference)

    def require_teacher(self, batch: Batch) -> DisWOTSignals:
        if self.teacher is None:
            raise ValueError("this proxy compares with the teacher: build the context with teacher_context()")
        if self.batch_size is not None and len(batch[0]) != self.batch_size:
            raise ValueError(f"the teacher's signals were measured on a batch of {self.batch_size}, "
                             f"not {len(batch[0])}: use the same batch for every candidate")
        return self.teacher
