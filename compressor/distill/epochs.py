"""How many epochs a nested family trains for when the user does not say.

A family cut from the teacher (the `teacher_scaled` space) starts from the teacher's weights
and needs little: 12 epochs were best on the demo over 3 seeds, where 4 and 6 cost 0.3-0.4
points (BENCHMARKS.md "Distillation epochs"). A family from a built-in space (`cnn`, `mobile`,
`transformer`) starts from random weights and is still learning at 12: SqueezeNet 1.1's
from-scratch CNN (10.5k parameters, 0.8 MMACs) reached 86 % at epoch 12 and 94 % at 48, its
loss flat only from epoch 42 on (BENCHMARKS.md "Zoo teachers: families from scratch").
Such families are small by construction (they fit a budget the teacher does not), so
more epochs of them cost little: they get up to 4x the epochs, as many as keep the TA's
training compute within that of 12 epochs of a TA the teacher's size.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["DEFAULT_EPOCHS", "SCRATCH_FACTOR", "default_epochs", "from_scratch"]

DEFAULT_EPOCHS = 12
SCRATCH_FACTOR = 4

# spaces whose candidates are cut from the teacher and start from its weights
_INHERITING = frozenset({"teacher_scaled"})


def from_scratch(arch: Mapping[str, Any]) -> bool:
    """Whether a searched architecture starts from random weights (not cut from the teacher)."""
    return arch.get("space") not in _INHERITING


def default_epochs(requested: int | None, arch: Mapping[str, Any], teacher_macs: float,
                   ta_macs: float) -> tuple[int, str]:
    """The family's epochs and why: `requested` when given; 12 for a family cut from the
    teacher; for one from scratch 12 x teacher MACs / TA MACs, between 12 and 48."""
    if requested is not None:
        return requested, "as requested"
    if not from_scratch(arch):
        return DEFAULT_EPOCHS, "cut from the teacher: starts from its weights"
    share = ta_macs / teacher_macs if teacher_macs > 0 and ta_macs > 0 else 1 / SCRATCH_FACTOR
    epochs = max(DEFAULT_EPOCHS, min(SCRATCH_FACTOR * DEFAULT_EPOCHS, round(DEFAULT_EPOCHS / share)))
    space = arch.get("space", "built-in")
    return epochs, f"{space} family from random weights, its TA at {share:.2f}x the teacher's MACs"
