"""How many epochs a nested family trains for when the user does not say.

A family cut from the teacher (the `teacher_scaled` space) starts from the teacher's weights and
trains 12 epochs: best on the demo over 3 seeds, where 4 and 6 cost 0.3-0.4 points (BENCHMARKS.md
"Distillation epochs"). Zoo teachers' cuts were still learning at 12: with `--epochs 24` (ending
early on a plateau) ResNet-18 at 1/2 of its latency gained 0.2-1.0 points of mean accuracy over its
sizes, GhostNet at 1/2 0.3-0.4 and ConvNeXt-atto at 1/4 0.7-1.3 (2 seeds each, the same families
resumed from their distillation), at 1.5-2x the distillation time. Planned for 24 by default (and
ended once caught up with the teacher), the demo's cut lost 0.3-0.5 points at 1.1-1.5x the time:
its one-cycle schedule peaks later and a 3-epoch cooldown from near the peak anneals less well
than the 12-epoch schedule's own decay (BENCHMARKS.md "Distillation of cut families: 24 epochs that
end once caught up"). So 12 stays, and a run whose cut ends behind its teacher suggests 24.

A family from a built-in space (`cnn`, `mobile`, `transformer`) starts from random weights and is
still learning at 12: SqueezeNet 1.1's from-scratch CNN (10.5k parameters) reached 86 % at epoch
12 and 94 % at 48, its loss flat only from epoch 42 on, and a wider one (a TA of about the
teacher's MACs) 85.5 % at 13 (BENCHMARKS.md "Zoo teachers: families from random weights"). Such
a family gets 4x the epochs, whatever its size: it is the search's pick only where nothing cut
from the teacher scored better within the budget, and undertrained it loses what the pick was
for. It ends early, after a cooldown (`plateau.py`), once its sizes have stopped improving: 48
is the most it trains.
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["DEFAULT_EPOCHS", "SCRATCH_EPOCHS", "default_epochs", "from_scratch"]

DEFAULT_EPOCHS = 12
SCRATCH_EPOCHS = 4 * DEFAULT_EPOCHS

# spaces whose candidates are cut from the teacher and start from its weights
_INHERITING = frozenset({"teacher_scaled"})


def from_scratch(arch: Mapping[str, Any]) -> bool:
    """Whether a searched architecture starts from random weights (not cut from the teacher)."""
    return arch.get("space") not in _INHERITING


def default_epochs(requested: int | None, arch: Mapping[str, Any]) -> tuple[int, str]:
    """The family's epochs and why: `requested` when given; 12 for a family cut from the
    teacher, 48 for one from random weights (which ends early once it has stopped improving:
    `plateau.py`)."""
    if requested is not None:
        return requested, "as requested"
    if not from_scratch(arch):
        return DEFAULT_EPOCHS, "cut from the teacher: starts from its weights"
    return SCRATCH_EPOCHS, f"{arch.get('space', 'built-in')} family from random weights"
