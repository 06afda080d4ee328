"""The MatTA teacher assistant: the chosen student, widened, with the student nested inside.

MatTA trains a higher-capacity assistant and extracts the student as its prefix
sub-network (the first k channels of every layer). For that to be *exact*, the
student must be what `prune.materialize` cuts out of the assistant at the
recorded ratio, with the assistant's own channel groups and the same rounding.
`nested_ratio` derives that ratio from the two built networks and proves it by
materialising; a widening that does not nest exactly is rejected, never patched.
Where widening every group at once does not nest (widths a teacher ties together,
as GhostNet's ghost modules do), the groups are widened one at a time and each
kept only where the assistant still nests the student, proved the same way
(`widen_what_nests`).

The assistant is capped by the teacher's predicted latency: a TA slower than the
teacher would be a worse teacher, not a bridge (Mirzadeh et al. 2020).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import prune as P
from ..types import Teacher
from .spaces import Arch, SearchSpace

log = logging.getLogger(__name__)


class NotNestedError(ValueError):
    """The student is not a prefix sub-network of the assistant."""


@dataclass(frozen=True)
class Assistant:
    arch: Arch  # includes "student_ratio" and "expansion"
    model: nn.Module
    latency_ms: float


def _out_width(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise NotNestedError(f"{type(module).__name__} has no output width")


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def nested_ratio(ta: nn.Module, student: nn.Module, example: torch.Tensor,
                 round_to: int) -> float | dict[str, float]:
    """The width ratio (one float, or one per group of the assistant) that cuts `student` out of `ta`.

    Each group's ratio is (student width of its root layer) / (assistant width); it
    is exact under `prune.keep_count` because student widths are multiples of
    `round_to` (or whole heads). Raises `NotNestedError` if materialising the
    assistant at that ratio does not give the student's exact tensor shapes.
    """
    groups = P.channel_groups(ta, example)
    mods = dict(student.named_modules())
    ratios: dict[str, float] = {}
    for g in groups:
        if g.key not in mods:
            raise NotNestedError(f"the student has no layer {g.key!r}")
        kept = _out_width(mods[g.key])
        if kept > g.size:
            raise NotNestedError(f"the student's {g.key} is wider than the assistant's ({kept} > {g.size})")
        if kept != g.size and not g.nestable:
            raise NotNestedError(f"group {g.key} passes through a normalisation and cannot be nested")
        ratios[g.key] = kept / g.size
        if P.keep_count(g.size, ratios[g.key], round_to, g.unit) != kept:
            raise NotNestedError(f"{kept} of {g.size} channels of {g.key} is not a rounded prefix")
    if any(r < 1.0 for r in ratios.values()):
        cut = P.materialize(ta, example, groups, ratios, None, round_to)
        if _shapes(cut) != _shapes(student):
            raise NotNestedError("the assistant cut at the student's ratios has other tensor shapes than the student")
    elif _shapes(ta) != _shapes(student):
        raise NotNestedError("the assistant has other tensor shapes than the student")
    values = set(ratios.values())
    return values.pop() if len(values) == 1 else (1.0 if not values else ratios)


def widen_what_nests(space: SearchSpace, student_arch: Mapping[str, Any], student: nn.Module, teacher: Teacher,
                     factor: float, example: torch.Tensor, round_to: int) -> Arch | None:
    """`student_arch` with its width groups widened by `factor` one at a time, each kept only where
    the assistant still nests the student exactly; None when no group could be widened (or the
    space has no per-group ratios).

    The fallback for a teacher cut whose widths are tied in ways a uniform widening breaks: on
    GhostNet-0.5 a ghost module's concatenated halves and the depthwise shortcut that follows its
    block's input tie some groups' widths to others', and every widening of a searched student
    (x1.25 to x8) failed to nest it, so its TA was the student itself, 23 % under the budget
    (BENCHMARKS.md "Zoo teachers"). One network built and checked per group: seconds, and only
    where the uniform widening failed."""
    start = space.canonical(student_arch)
    if not isinstance(start.get("ratios"), Mapping):
        return None
    target = space.widen(student_arch, factor)["ratios"]
    current, widened = start, 0
    for key, ratio in target.items():
        if ratio == current["ratios"].get(key):
            continue
        trial = {**current, "ratios": {**current["ratios"], key: ratio}}
        try:
            nested_ratio(space.build(trial, teacher), student, example, round_to)
        except Exception as e:  # noqa: BLE001 - not nested (or not buildable) with this group wider: left as it is
            log.debug("assistant x%.2f: %s kept at the student's width (%s)", factor, key, e)
            continue
        current, widened = trial, widened + 1
    return current if widened else None


def widen_to_assistant(space: SearchSpace, student_arch: Mapping[str, Any], teacher: Teacher, *,
                       latency_fn: Callable[[nn.Module], float], max_latency_ms: float,
                       factors: Sequence[float], example: torch.Tensor, round_to: int,
                       student_latency_ms: float | None = None, budget_ms: float | None = None,
                       reach: Sequence[float] = ()) -> Assistant:
    """The widest of `factors` whose assistant is no slower than `max_latency_ms` and nests the student.

    When that assistant still fits `budget_ms` (a student far under the budget: the family would
    have no size with more capacity than the budget allows, and its sizes would all sit far below
    it), the wider `reach` factors are tried, narrowest first, and the first assistant over the
    budget is taken (else the widest that qualifies): MatTA's TA is a larger version of the
    student, up to about the teacher, and the nested sizes then span from it down to the budget.

    Falls back to the student itself (factor 1, ratio 1.0) when no widening qualifies,
    including when a wider network cannot be built or timed.
    """
    student = space.build(student_arch, teacher)

    def assistant(arch: Arch, factor: float) -> Assistant | None:
        ta = space.build(arch, teacher)
        latency = float(latency_fn(ta))
        if latency > max_latency_ms:
            log.info("assistant x%.2f predicted %.3f ms > teacher %.3f ms", factor, latency, max_latency_ms)
            return None
        ratio = nested_ratio(ta, student, example, round_to)
        return Assistant({**arch, "student_ratio": ratio, "expansion": factor}, ta, latency)

    def widened(factor: float) -> Assistant | None:
        try:
            return assistant(space.widen(student_arch, factor), factor)
        except NotNestedError as e:
            partial = widen_what_nests(space, student_arch, student, teacher, factor, example, round_to)
            if partial is None:
                log.info("assistant x%.2f rejected (%s)", factor, e)
                return None
            log.info("assistant x%.2f: not nested with every group widened (%s); the groups that nest widened", factor, e)
            try:
                return assistant(partial, factor)
            except Exception as e2:  # noqa: BLE001 - as below
                log.info("assistant x%.2f rejected (%s: %s)", factor, type(e2).__name__, e2)
                return None
        except Exception as e:  # a wider network that cannot be built, or the predictor cannot time
            log.info("assistant x%.2f rejected (%s: %s)", factor, type(e).__name__, e)
            return None

    chosen = next((a for f in sorted((f for f in factors if f > 1.0), reverse=True)
                   if (a := widened(f)) is not None), None)
    if chosen is None:
        latency = student_latency_ms if student_latency_ms is not None else float(latency_fn(student))
        chosen = Assistant({**dict(student_arch), "student_ratio": 1.0, "expansion": 1.0}, student, latency)
    if budget_ms is None or chosen.latency_ms > budget_ms:
        return chosen
    for factor in sorted(f for f in reach if f > chosen.arch["expansion"]):
        wider = widened(factor)
        if wider is None or wider.latency_ms <= chosen.latency_ms:
            continue  # slower than the teacher, not nested, or clamped at the teacher's widths
        chosen = wider
        if chosen.latency_ms > budget_ms:
            break
    return chosen
