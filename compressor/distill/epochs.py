"""How many epochs a nested family trains for when the user does not say.

A family cut from the teacher (the `teacher_scaled` space) starts from the teacher's weights.
12 epochs were best on the demo over 3 seeds, where 4 and 6 cost 0.3-0.4 points (BENCHMARKS.md
"Distillation epochs"), but zoo teachers' cuts were still learning there: planned for 24 epochs,
ResNet-18 at 1/2 of its latency gained 0.0-1.1 points on every size, GhostNet at 1/2 0.2-0.9 and
ConvNeXt-atto at 1/4 0.5-2.2 (2 seeds each, the same families resumed from their distillation;
BENCHMARKS.md "Distillation of cut families: 24 epochs that end once caught up"). Such a family
is planned for 24 and ends early, after a cooldown (`plateau.py`), once its sizes have caught up
with the teacher's validation accuracy or stopped improving: the demo's family catches up at
epoch 10 and ends at 13.

A family from a built-in space (`cnn`, `mobile`, `transformer`) starts from random weights and is
still learning at 12: SqueezeNet 1.1's from-scratch CNN (10.5k parameters) reached 86 % at epoch
12 and 94 % at 48, its loss flat only from epoch 42 on, and a wider one (a TA of about the
teacher's MACs) 85.5 % at 13 (BENCHMARKS.md "Zoo teachers: families from random weights"). Such
a family gets 4x the epochs of a single model's distillation, whatever its size: it is the
search's pick only where nothing cut from the teacher scored better within the budget, and
undertrained it loses what the pick was for. It ends early by the same rule: 48 is the most it
trains.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["CUT_EPOCHS", "DEFAULT_EPOCHS", "SCRATCH_EPOCHS", "default_epochs", "from_scratch"]

DEFAULT_EPOCHS = 12  # one model distilled alone (`--method skeleton`); language models' passes
CUT_EPOCHS = 2 * DEFAULT_EPOCHS  # a nested family cut from the teacher, ending early once caught up
SCRATCH_EPOCHS = 4 * DEFAULT_EPOCHS

# spaces whose candidates are cut from the teacher and start from its weights
_INHERITING = frozenset({"teacher_scaled"})


def from_scratch(arch: Mapping[str, Any]) -> bool:
    """Whether a searched architecture starts from random weights (not cut from the teacher)."""
    return arch.get("space") not in _INHERITING


def default_epochs(requested: int | None, arch: Mapping[str, Any]) -> tuple[int, str]:
    """The family's epochs and why: `requested` when given; 24 for a family cut from the
    teacher, 48 for one from random weights (either ends early once it has caught up with the
    teacher or stopped improving: `plateau.py`)."""
    if requested is not None:
        return requested, "as requested"
    if not from_scratch(arch):
        return CUT_EPOCHS, "cut from the teacher: starts from its weights"
    return SCRATCH_EPOCHS, f"{arch.get('space', 'built-in')} family from random weights"
