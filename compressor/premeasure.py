"""Measure before committing: the search's pick and the planned nested sizes, timed untrained.

The search ranks candidates on *predicted* latency; distillation then spends most of
the run on the one it picked. A predictor that has not seen a teacher's operator mix
(dense concatenation, depthwise, attention) can be off by half, and that surfaces only
at export, after training. Latency does not depend on weights, so on a profile this
machine can measure, the chosen student, the next-best in-budget candidates and the
TA's planned nested sizes are exported and timed here untrained (a short timing
setting: seconds in all), before any training:

- if the chosen student's measured latency misses the budget, the best-scoring
  checked candidate that fits is taken instead (and its TA widened again, with the
  predictor scaled by that student's measured/predicted ratio);
- if every checked candidate of the student's space measures well under its prediction
  (at most `PESSIMISTIC` of it), the search judged the budget too strictly: candidates
  it predicted over the budget that score higher and would fit at the measured ratio are
  timed, best score first, and the best-scoring one that fits is taken (its TA widened and
  its sizes planned with the predictor scaled the same way);
- if a nested size meant to fit (predicted within the budget) measures over it, the
  sizes are planned again (`choose_sizes`) with the predictor scaled by the worst
  measured/predicted ratio seen, until every size meant to fit does.

The outcome is kept in ``search/verified.json`` and reused by ``--resume`` as it is:
timing again could come out differently and change the student a checkpoint was
trained for. On a predicted-only profile nothing can be measured; the step is skipped
and the record says so.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import prune as P
from .budget import Budget
from .distill import Ratio, SizeSpec, choose_sizes, size_name
from .export import export_onnx
from .files import first_line, write_json
from .hardware import QUICK_TIMING, is_measurable, latency_report, quick_timing, unavailable_reason
from .progress import Progress
from .search import SPACES, build_arch
from .search.assistant import widen_to_assistant
from .search.spaces import uncuttable_groups
from .types import Candidate, HardwareProfile, LatencyReport, SearchResult, Teacher, to_jsonable

log = logging.getLogger(__name__)

RECORD_NAME = "verified.json"  # in the run's search folder
# Re-planning the nested sizes with a corrected predictor converges in one round when the
# error is a constant factor; a few more cover an error that grows with width.
_MAX_REPLANS = 3
# A predictor whose predictions of the checked candidates were all at least 1 / PESSIMISTIC of
# their measurements hid candidates that fit: they are looked for (`_check_higher`). A SqueezeNet's
# from-scratch CNN students measured at 0.40x their prediction, the pick at 38 % of the budget.
PESSIMISTIC = 0.8

LatencyFn = Callable[[nn.Module], float]
MeasureFn = Callable[[nn.Module, str], LatencyReport]  # (untrained network, a name for its file) -> report


@dataclass(frozen=True)
class Nesting:
    """The TA as distillation nests its sizes: the network, its channel groups and order, the sizes."""

    ta: nn.Module
    example: torch.Tensor
    groups: list[P.ChannelGroup]
    order: Mapping[str, Sequence[int]]
    sizes: list[SizeSpec]
    round_to: int

    def size_module(self, ratio: Ratio) -> nn.Module:
        """The dense network of one size, as `choose_sizes` predicts it."""
        nestable = [g for g in self.groups if g.nestable]
        return P.materialize(self.ta, self.example, nestable, ratio, self.order, self.round_to).eval()


def plan_sizes(ta_arch: Mapping[str, Any], teacher: Teacher, example: torch.Tensor, latency_fn: LatencyFn,
               budget_ms: float, round_to: int, fixed: Sequence[float] | None = None,
               sizes: Sequence[SizeSpec] | None = None) -> Nesting:
    """Build the TA and plan its nested sizes: `sizes` as given, the user's `fixed` ratios, or
    `choose_sizes` on `latency_fn` (4 widths from the TA down to under the budget, plus the student)."""
    ta = build_arch(ta_arch, teacher)
    groups = P.channel_groups(ta, example)
    # a group Torch-Pruning couples but no cut leaves runnable (timm's attention: the head count is a
    # constant of the qkv reshape) is never nested: the space keeps it whole in every candidate, and a
    # size that cut it would not run (DeiT-tiny's sizes failed to build before any training)
    whole = set(uncuttable_groups(ta, example, [g for g in groups if g.nestable], teacher.spec.num_classes,
                                  round_to))
    groups = [dataclasses.replace(g, nestable=False) if g.key in whole else g for g in groups]
    order = P.importance_order(ta, example, groups)
    if sizes is not None:
        planned = [(str(n), r) for n, r in sizes]
    elif fixed:
        planned = [(size_name(r), float(r)) for r in sorted(set(fixed), reverse=True)]
    else:
        planned = choose_sizes(ta, example, groups, order, latency_fn, budget_ms, n=4,
                               student_ratio=ta_arch.get("student_ratio"), round_to=round_to)
    return Nesting(ta, example, groups, order, planned, round_to)


# ---------------------------------------------------------------------------- the record

@dataclass(frozen=True)
class Checked:
    """One network timed before training: what the predictor said, what the profile measured."""

    name: str  # "student", "trial 7", or a nested size's name (w050)
    role: str  # "student", "candidate", "higher" (predicted over the budget: `_check_higher`) or "size"
    predicted_ms: float
    measured_ms: float
    error: float  # (predicted - measured) / measured: negative when the predictor was optimistic
    fits: bool  # the budget rule on the measurement (`Budget.fits`)
    trial_number: int | None = None
    spread_ms: float = 0.0
    plan: int = 0  # nested sizes: which plan measured it (0 = as predicted; 1+ = re-planned, scaled)


@dataclass(frozen=True)
class Verified:
    """What distillation is given: the (possibly re-selected) search result, the planned sizes
    (None: plan them as usual) and the manifest's record of the check."""

    result: SearchResult
    sizes: list[SizeSpec] | None
    record: dict[str, Any] = field(default_factory=dict)


def _checked(name: str, role: str, predicted: float, report: LatencyReport, budget: Budget,
             trial: int | None = None, plan: int = 0) -> Checked:
    measured = report.value(budget.stat)
    error = (predicted - measured) / measured if measured > 0 else float("nan")
    return Checked(name=name, role=role, predicted_ms=predicted, measured_ms=measured, error=error,
                   fits=budget.fits(report), trial_number=trial, spread_ms=report.spread_ms, plan=plan)


def _ratio(c: Checked) -> float:
    """measured / predicted: the factor the predictor was off by on this network."""
    return c.measured_ms / max(c.predicted_ms, 1e-9)


# ---------------------------------------------------------------------------- measuring

def quick_measure(profile: HardwareProfile, shape: Sequence[int], example: torch.Tensor,
                  folder: Path, budget: Budget | None = None) -> MeasureFn:
    """Export an untrained network to ONNX and time it on `profile` the way the export stage
    does (`latency_report`), under the quick timing (`hardware.quick_timing`).

    With `budget`, a near miss (the statistic within the budget, the statistic plus its spread
    over it) is timed again with the profile's own timing, and that verdict stands: the quick
    timing's few repeats leave a spread of up to a fifth of the value on a shared machine, and
    rejecting on it threw out the best candidate of a ConvNeXt (0.115 ± 0.024 ms against a
    0.128 ms budget) for one at 0.048 ms."""
    quick = quick_timing(profile)

    def measure(module: nn.Module, name: str) -> LatencyReport:
        onnx = export_onnx(module.eval(), example, folder / f"{name}.onnx", slim=False)
        report = latency_report(quick, shape, onnx_path=onnx.path, module=module)
        if budget is not None and report.value(budget.stat) <= budget.ms and not budget.fits(report):
            log.info("%s: %.3f ms ± %.3f against the %.3f ms budget under the quick timing; timing it again",
                     name, report.value(budget.stat), report.spread_ms or 0.0, budget.ms)
            report = latency_report(profile, shape, onnx_path=onnx.path, module=module)
        return report
    return measure


def _scaled(latency_fn: LatencyFn, factor: float) -> LatencyFn:
    return lambda m: factor * float(latency_fn(m))


# ---------------------------------------------------------------------------- the step

def premeasure(result: SearchResult, teacher: Teacher, example: torch.Tensor, *, profile: HardwareProfile,
               latency_fn: LatencyFn, budget: Budget, top: int, teacher_latency_ms: float, round_to: int,
               ta_factors: Sequence[float], fixed_sizes: Sequence[float] | None, search_dir: Path,
               resume: bool, progress: Progress, measure: MeasureFn | None = None,
               ta_reach: Sequence[float] = ()) -> Verified:
    """The search's result checked by measurement before training (see the module's docstring).

    `top` candidates are measured (the chosen student first; 0 turns the step off).
    `measure` replaces exporting and timing (tests give fixed figures)."""
    path = search_dir / RECORD_NAME
    if resume:
        saved = _saved(path, result)
        if saved is not None:
            progress.log(f"measured before training: reusing {path} ({_summary(saved.record)})")
            return saved
    started = time.perf_counter()
    reason = None if top > 0 else "turned off (verify_top = 0)"
    if reason is None and not is_measurable(profile):
        reason = unavailable_reason(profile) or f"profile {profile.name} cannot be measured here"
    if reason is not None:
        verified = Verified(result, None, {"skipped": reason, "profile": profile.name})
    else:
        with tempfile.TemporaryDirectory(prefix="premeasure-") as tmp:
            fn = measure or quick_measure(profile, teacher.spec.shape, example, Path(tmp), budget)
            verified = _check(result, teacher, example, latency_fn=latency_fn, budget=budget, top=top,
                              teacher_latency_ms=teacher_latency_ms, round_to=round_to, ta_factors=ta_factors,
                              fixed_sizes=fixed_sizes, measure=fn, ta_reach=ta_reach)
        quick = quick_timing(profile)
        verified.record.update(profile=profile.name, timing={k: getattr(quick, k) for k in QUICK_TIMING},
                               seconds=round(time.perf_counter() - started, 3))
    _save(path, verified, result)
    progress.log(f"measured before training: {_summary(verified.record)}")
    return verified


def _check(result: SearchResult, teacher: Teacher, example: torch.Tensor, *, latency_fn: LatencyFn,
           budget: Budget, top: int, teacher_latency_ms: float, round_to: int, ta_factors: Sequence[float],
           fixed_sizes: Sequence[float] | None, measure: MeasureFn, ta_reach: Sequence[float] = ()) -> Verified:
    searched = result.student.trial_number
    checked, student = _check_candidates(result, teacher, latency_fn, budget, top, measure)
    higher, student, upward = _check_higher(result, student, checked, teacher, latency_fn, budget, top, measure)
    checked += higher
    reselected = student.trial_number != searched
    first_scale = 1.0
    if reselected:
        mine = next(c for c in checked if c.trial_number == student.trial_number)
        result = _reselect(result, student, teacher, example, latency_fn, _ratio(mine), teacher_latency_ms,
                           round_to, ta_factors, budget.ms, ta_reach)
        if upward is not None:
            first_scale = upward  # sizes planned at the measured ratio too, or the smaller ones stay far under
    sizes, size_checks, scale = _check_sizes(result, teacher, example, latency_fn, budget, round_to, fixed_sizes,
                                             measure, first_scale)
    ta_widened = False
    wider = None if fixed_sizes else _ta_over_budget(result, size_checks, teacher, example, latency_fn,
                                                      teacher_latency_ms, round_to, ta_factors, budget.ms, ta_reach)
    if wider is not None:
        result, ta_widened = wider, True
        sizes, more, scale = _check_sizes(result, teacher, example, latency_fn, budget, round_to, None, measure,
                                          _ratio(_ta_check(size_checks)), first_plan=_last_plan(size_checks) + 1)
        size_checks += more
    record = {"checked": [to_jsonable(c) for c in (*checked, *size_checks)], "reselected": reselected,
              "reselected_up": upward is not None, "ta_widened": ta_widened,
              "searched_trial": searched, "chosen_trial": student.trial_number,
              "sizes": [[n, r] for n, r in sizes], "size_scale": scale, "sizes_replanned": scale != 1.0}
    return Verified(result, sizes, record)


def _pool(result: SearchResult) -> dict[int, Candidate]:
    return {c.trial_number: c for c in (*result.pareto, *result.runners_up)}


def _ranked(result: SearchResult, budget: Budget) -> list[Candidate]:
    """The chosen student, then the other in-budget candidates, best score first.

    On the front (score up, latency down) a higher score costs more latency, so slowest first
    is best-scoring first. Off-front candidates (`runners_up`) are beaten on both by one on the
    front, as predicted; but when that one measures over the budget, the best-scoring network
    that fits may be one of them, not the next, far smaller, point of the front."""
    others = [c for n, c in _pool(result).items() if n != result.student.trial_number
              and budget.fits(c.est_latency_ms)]
    return [result.student, *sorted(others, key=lambda c: (-(c.score if c.score is not None else 0.0),
                                                           -c.est_latency_ms, c.trial_number))]


def _time_candidate(cand: Candidate, name: str, role: str, teacher: Teacher, latency_fn: LatencyFn,
                    budget: Budget, measure: MeasureFn) -> Checked | None:
    """One search candidate built, timed untrained and recorded; None (and one warning line) when it cannot be."""
    try:
        module = build_arch(cand.arch, teacher).eval()
        report = measure(module, f"candidate-{cand.trial_number}")
    except Exception as e:  # noqa: BLE001 - a candidate that cannot be timed is not chosen; say why in one line
        log.warning("%s (trial %d) could not be measured before training: %s", name, cand.trial_number, first_line(e))
        return None
    return _checked(name, role, float(latency_fn(module)), report, budget, cand.trial_number)


def _check_candidates(result: SearchResult, teacher: Teacher, latency_fn: LatencyFn, budget: Budget, top: int,
                      measure: MeasureFn) -> tuple[list[Checked], Candidate]:
    """Measure the `top` best candidates; when none of them fits, go on down the front until one does.
    Returns every check, and the best-scoring candidate that fits (else the searched student)."""
    checked: list[Checked] = []
    for i, cand in enumerate(_ranked(result, budget)):
        if i >= top and any(c.fits for c in checked):
            break
        name = "student" if i == 0 else f"trial {cand.trial_number}"
        check = _time_candidate(cand, name, "student" if i == 0 else "candidate", teacher, latency_fn, budget,
                                measure)
        if check is not None:
            checked.append(check)
    fitting = next((c for c in checked if c.fits), None)
    if not checked or fitting is None or fitting.trial_number == result.student.trial_number:
        if checked and fitting is None and result.feasible:
            log.warning("no searched candidate fits the %.3f ms budget when measured; keeping the searched student",
                        budget.ms)
        return checked, result.student
    return checked, _pool(result)[fitting.trial_number]


def _check_higher(result: SearchResult, chosen: Candidate, checked: list[Checked], teacher: Teacher,
                  latency_fn: LatencyFn, budget: Budget, top: int,
                  measure: MeasureFn) -> tuple[list[Checked], Candidate, float | None]:
    """Candidates predicted over the budget, timed when the predictor was pessimistic on the
    chosen student's space (see the module's docstring). Returns the new checks, the student
    (`chosen` unless a higher-scoring one fits) and, when one was taken, the measured/predicted
    ratio it was judged at (else None)."""
    pool = {**_pool(result), **{c.trial_number: c for c in result.over_budget}}
    space = chosen.arch.get("space")
    mine = next((c for c in checked if c.trial_number == chosen.trial_number and c.role != "size"), None)
    same = [c for c in checked if c.role != "size" and c.trial_number in pool
            and pool[c.trial_number].arch.get("space") == space]
    if mine is None or not mine.fits or not same:
        return [], chosen, None
    ratio = max(_ratio(c) for c in same)  # the least pessimistic: a candidate judged on it fits on every other
    if ratio > PESSIMISTIC:
        return [], chosen, None
    seen = {c.trial_number for c in checked}
    score = chosen.score if chosen.score is not None else float("-inf")
    higher = sorted((c for c in result.over_budget
                     if c.trial_number not in seen and c.arch.get("space") == space
                     and (c.score if c.score is not None else float("-inf")) > score
                     and budget.fits(ratio * c.est_latency_ms)),
                    key=lambda c: (-(c.score or 0.0), -c.est_latency_ms, c.trial_number))
    out: list[Checked] = []
    for cand in higher[:max(top, 1)]:
        check = _time_candidate(cand, f"trial {cand.trial_number}", "higher", teacher, latency_fn, budget, measure)
        if check is not None:
            out.append(check)
    fitting = next((c for c in out if c.fits), None)  # `out` is in score order
    if fitting is None:
        return out, chosen, None
    log.info("the predictor was %.2fx pessimistic on %s candidates (the pick measured %.3f ms against a %.3f ms "
             "budget): taking trial %d, predicted %.3f ms, measured %.3f ms", 1 / ratio, space, mine.measured_ms,
             budget.ms, fitting.trial_number, fitting.predicted_ms, fitting.measured_ms)
    return out, pool[fitting.trial_number], ratio


def _reselect(result: SearchResult, student: Candidate, teacher: Teacher, example: torch.Tensor,
              latency_fn: LatencyFn, correction: float, teacher_latency_ms: float, round_to: int,
              ta_factors: Sequence[float], budget_ms: float | None = None,
              ta_reach: Sequence[float] = ()) -> SearchResult:
    """`result` with `student` chosen instead, and its own TA widened as the search does (`widen_to_assistant`).

    The TA may be as slow as the teacher: that is judged with the predictor times `correction`
    (the new student's measured / predicted), so an optimistic predictor does not make the TA
    slower than the teacher. Its recorded `est_latency_ms` is the plain prediction, like every candidate's."""
    space = SPACES.get(student.arch["space"])(teacher, round_to=round_to)
    corrected = correction * student.est_latency_ms
    ta = widen_to_assistant(space, student.arch, teacher, latency_fn=_scaled(latency_fn, correction),
                            max_latency_ms=max(teacher_latency_ms, corrected), factors=ta_factors,
                            example=example, round_to=round_to, student_latency_ms=corrected,
                            budget_ms=budget_ms, reach=ta_reach)
    ta_candidate = Candidate(arch=dict(ta.arch), proxy_scores={}, est_latency_ms=float(latency_fn(ta.model)),
                             trial_number=student.trial_number, params=P.count_params(ta.model),
                             macs=P.count_macs(ta.model, example[:1]))
    return dataclasses.replace(result, student=student, ta=ta_candidate)


def _ta_check(checks: Sequence[Checked]) -> Checked | None:
    """The last measurement of the TA itself (the size at ratio 1.0) among the nested sizes' checks."""
    last = _last_plan(checks)
    return next((c for c in checks if c.role == "size" and c.name == size_name(1.0) and c.plan == last), None)


def _last_plan(checks: Sequence[Checked]) -> int:
    return max((c.plan for c in checks if c.role == "size"), default=0)


def _ta_over_budget(result: SearchResult, size_checks: Sequence[Checked], teacher: Teacher, example: torch.Tensor,
                    latency_fn: LatencyFn, teacher_latency_ms: float, round_to: int, ta_factors: Sequence[float],
                    budget_ms: float, ta_reach: Sequence[float]) -> SearchResult | None:
    """The search's result with its TA widened again where the TA itself measured within the budget.

    The TA is meant to be larger than the budget allows (MatTA: a larger version of the student),
    with the nested sizes spanning from it down to the budget; widened on a pessimistic predictor
    it can measure under the budget, and the whole family then sits below it: on the small
    DenseNet and SqueezeNet at a quarter of their latency, a [48, 48] TA predicted at 0.018 ms
    measured 0.012 ms against a 0.014-0.015 ms budget, and the TA itself was the size served.
    Widened here with the predictor scaled by the TA's measured / predicted latency, as far as
    `ta_reach` goes; None when the TA measured over the budget, or no wider TA is predicted
    slower than the one measured."""
    ta = _ta_check(size_checks)
    if ta is None or not ta.fits or not ta_reach:
        return None
    wider = _reselect(result, result.student, teacher, example, latency_fn, _ratio(ta), teacher_latency_ms,
                      round_to, ta_factors, budget_ms, ta_reach)
    if wider.ta.arch == result.ta.arch or wider.ta.est_latency_ms <= ta.predicted_ms:
        return None
    log.info("the TA measured %.3f ms, within the %.3f ms budget: widened x%s (predicted %.3f ms at the measured "
             "ratio)", ta.measured_ms, budget_ms, wider.ta.arch.get("expansion"), wider.ta.est_latency_ms * _ratio(ta))
    return wider


def _check_sizes(result: SearchResult, teacher: Teacher, example: torch.Tensor, latency_fn: LatencyFn,
                 budget: Budget, round_to: int, fixed: Sequence[float] | None,
                 measure: MeasureFn, scale: float = 1.0,
                 first_plan: int = 0) -> tuple[list[SizeSpec], list[Checked], float]:
    """Plan the nested sizes (with the predictor times `scale`), measure them, and plan again with
    the predictor scaled while a size meant to fit (its scaled prediction within the budget) measures
    over it; sizes the user fixed (`--sizes`) are measured, not re-planned. Returns the last plan,
    every check and the scale. `first_plan`: the number the first plan's checks carry."""
    checks: list[Checked] = []
    for plan in range(first_plan, first_plan + _MAX_REPLANS + 1):
        nest = plan_sizes(result.ta.arch, teacher, example, _scaled(latency_fn, scale), budget.ms, round_to, fixed)
        measured = _measure_sizes(nest, latency_fn, budget, measure, plan)
        checks += measured
        misses = [c for c in measured if scale * c.predicted_ms <= budget.ms and not c.fits]
        if not misses or fixed:
            break
        # every size that missed is then predicted over the budget, so a re-plan cannot keep it as a fitting size
        scale = max(_ratio(c) for c in misses) * (1 + 1e-6)
    return nest.sizes, checks, round(scale, 4)


def _measure_sizes(nest: Nesting, latency_fn: LatencyFn, budget: Budget, measure: MeasureFn,
                   plan: int) -> list[Checked]:
    out = []
    for name, ratio in nest.sizes:
        module = nest.size_module(ratio)
        try:
            report = measure(module, f"size-{plan}-{name}")
        except Exception as e:  # noqa: BLE001 - the export stage reports a size it cannot export
            log.warning("nested size %s could not be measured before training: %s", name, first_line(e))
            continue
        out.append(_checked(name, "size", float(latency_fn(module)), report, budget, plan=plan))
    return out


# ---------------------------------------------------------------------------- saving and resuming

def _candidate_json(c: Candidate) -> dict[str, Any]:
    return {"arch": dict(c.arch), "proxy_scores": dict(c.proxy_scores), "est_latency_ms": c.est_latency_ms,
            "trial_number": c.trial_number, "params": c.params, "macs": c.macs, "score": c.score}


def _save(path: Path, verified: Verified, searched: SearchResult) -> None:
    write_json(path, {"searched_trial": searched.student.trial_number, "searched_ta": dict(searched.ta.arch),
                      "student": _candidate_json(verified.result.student), "ta": _candidate_json(verified.result.ta),
                      "sizes": None if verified.sizes is None else [[n, r] for n, r in verified.sizes],
                      "record": verified.record})


def _json(value: Any) -> Any:
    """`value` as it reads back from a JSON file (tuples become lists), for comparing with a saved one."""
    return json.loads(json.dumps(to_jsonable(value)))


def _saved(path: Path, result: SearchResult) -> Verified | None:
    """The check of the run being resumed, when it was made for this search's pick; else None (check again)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["searched_trial"] != result.student.trial_number or saved["searched_ta"] != _json(result.ta.arch):
            log.warning("%s was made for another search result; measuring again", path)
            return None
        student, ta = Candidate(**saved["student"]), Candidate(**saved["ta"])
        sizes = None if saved["sizes"] is None else [(str(n), r) for n, r in saved["sizes"]]
        record = dict(saved["record"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s is unreadable (%s); measuring again", path, first_line(e))
        return None
    return Verified(dataclasses.replace(result, student=student, ta=ta), sizes, record)


def _summary(record: Mapping[str, Any]) -> str:
    """One line: what was measured, and whether the student or the sizes changed."""
    if "skipped" in record:
        return f"skipped: {record['skipped']}"
    checked = record.get("checked", [])
    cands = [c for c in checked if c["role"] != "size"]
    last = max((c.get("plan", 0) for c in checked if c["role"] == "size"), default=0)
    sizes = [c for c in checked if c["role"] == "size" and c.get("plan", 0) == last]
    first = cands[0] if cands else None
    head = (f"student predicted {first['predicted_ms']:.3f} ms, measured {first['measured_ms']:.3f} ms "
            f"(prediction {first['error']:+.0%})" if first else "no candidate could be measured")
    up = ", predicted over the budget by a pessimistic predictor" if record.get("reselected_up") else ""
    choice = (f"re-selected trial {record['chosen_trial']} ("
              f"{next(c['measured_ms'] for c in cands if c['trial_number'] == record['chosen_trial']):.3f} ms{up})"
              if record.get("reselected") else "kept")
    fitting = sum(c["fits"] for c in sizes)
    replanned = f", re-planned with the predictor x{record['size_scale']:.2f}" if record.get("sizes_replanned") else ""
    widened = "; the TA measured within the budget and was widened over it" if record.get("ta_widened") else ""
    return (f"{head}, {choice}{widened}; {len(cands)} candidate(s) checked; {len(sizes)} nested size(s) measured, "
            f"{fitting} in budget{replanned}")
