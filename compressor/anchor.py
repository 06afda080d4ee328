"""The latency predictor anchored on the teacher's own operator mix, before the search.

The host predictor is fitted on random plain, residual and separable CNNs. Students cut
from a zoo teacher (squeeze-excite, h-swish, dense concatenation, attention, grouped
convolutions) run 17-82 % slower than it predicts (benchmarks/results/predictor_zoo.md),
and the search, judging the budget on predictions, then picks students far over budget.

So before the search, on a profile this machine can measure, a few students of the
teacher-derived space at spread-out sizes (`PLAN`: the narrowest and shallowest, then
wider and deeper ones) are exported and timed untrained under the light calibration timing
(seconds), and a correction of the host predictor (`hardware.corrected.fit_correction`:
its coefficients refitted with the host's as a prior, by default) is fitted on them and on the teacher's own measured latency. The
corrected predictor (`CorrectedPredictor`) is what the search, the nested-size planning and
the check before training (`premeasure`) use; networks of the built-in families (the plain
CNN family is the host fit's calibration family) keep the host predictor.

The outcome is kept in ``search/anchor.json`` and reused by ``--resume`` as it is: timing
again could come out differently and change what the search and the sizes were judged on.
On a predicted-only profile nothing can be measured: the step is skipped, and the record
says so.
"""
from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .files import first_line, write_json
from .hardware import QUICK_TIMING, is_measurable, layer_costs, quick_timing, unavailable_reason
from .hardware.corrected import DEFAULT_METHOD, CorrectedPredictor, fit_correction, predictor_from_dict
from .hardware.predict import LatencyPredictor
from .progress import Progress
from .types import HardwareProfile, LatencyReport, Teacher

log = logging.getLogger(__name__)

RECORD_NAME = "anchor.json"  # in the run's search folder
SPACE = "teacher_scaled"
# The students timed, in this order: (width ratio of every channel group, which droppable blocks
# are kept). Spread out in size, from the space's smallest network up towards the teacher.
PLAN: tuple[tuple[float, str], ...] = ((0.25, "none"), (0.5, "alternate"), (0.75, "all"), (0.375, "all"),
                                       (1.0, "none"), (0.625, "alternate"))

MeasureFn = Callable[[nn.Module, str], LatencyReport]  # (untrained network, a name for its file) -> report


@dataclass(frozen=True)
class Anchored:
    """What the search is given: the predictor to judge candidates on (the host one where the
    step was skipped) and the manifest's record of the step."""

    predictor: Any
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def corrected(self) -> bool:
        return isinstance(self.predictor, CorrectedPredictor)


def plan_students(space: Any, n: int) -> list[tuple[str, dict[str, Any]]]:
    """Up to `n` distinct (name, arch) of `space` (a `TeacherScaledSpace`) at spread-out sizes (`PLAN`)."""
    from .search.spaces import UniformTrial  # here: importing the search package loads Optuna

    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for ratio, keep in PLAN:
        if len(out) >= n:
            break
        arch = space.suggest(UniformTrial(ratio, keep))
        key = json.dumps(arch, sort_keys=True)
        if key in seen:  # a teacher without droppable blocks: the keep patterns coincide
            continue
        seen.add(key)
        out.append((f"w{round(ratio * 1000):04d}-{keep}", arch))
    return out


def light_measure(profile: HardwareProfile, shape: Sequence[int], example: torch.Tensor, folder: Path) -> MeasureFn:
    """Export and time an untrained network as the host calibration does (`hardware.quick_timing`)."""
    from .premeasure import quick_measure

    return quick_measure(profile, shape, example, folder)


# ---------------------------------------------------------------------------- the step

def anchor_predictor(teacher: Teacher, predictor: Any, example: torch.Tensor, *, profile: HardwareProfile,
                     teacher_latency: LatencyReport | None, spaces: Sequence[str], students: int, round_to: int,
                     search_dir: Path, resume: bool, progress: Progress, method: str = DEFAULT_METHOD,
                     measure: MeasureFn | None = None) -> Anchored:
    """The host `predictor` corrected on the teacher's operator mix (see the module's docstring).

    `students` networks of the teacher-derived space are timed (0 turns the step off); the
    teacher's own `teacher_latency` is used too where it was measured. `measure` replaces
    exporting and timing (tests give fixed figures)."""
    path = search_dir / RECORD_NAME
    if resume:
        saved = _saved(path, teacher, profile)
        if saved is not None:
            progress.log(f"latency predictor on the teacher's operator mix: reusing {path} ({_summary(saved.record)})")
            return saved
    started = time.perf_counter()
    reason = _skip_reason(teacher, predictor, profile, spaces, students)
    if reason is not None:
        anchored = Anchored(predictor, {"skipped": reason, "profile": profile.name})
    else:
        with tempfile.TemporaryDirectory(prefix="anchor-") as tmp:
            fn = measure or light_measure(profile, teacher.spec.shape, example, Path(tmp))
            anchored = _fit(teacher, predictor, teacher_latency, students, round_to, method, fn)
        anchored.record.update(profile=profile.name, timing={k: getattr(quick_timing(profile), k) for k in QUICK_TIMING},
                               seconds=round(time.perf_counter() - started, 3))
    _save(path, anchored, teacher)
    progress.log(f"latency predictor on the teacher's operator mix: {_summary(anchored.record)}")
    return anchored


def _skip_reason(teacher: Teacher, predictor: Any, profile: HardwareProfile, spaces: Sequence[str],
                 students: int) -> str | None:
    if students <= 0:
        return "turned off (anchor_students = 0)"
    if not is_measurable(profile):
        return unavailable_reason(profile) or f"profile {profile.name} cannot be measured here"
    if not isinstance(predictor, LatencyPredictor):
        return f"the {getattr(predictor, 'method', '?')} predictor is not a host-fitted cost model"
    if SPACE not in spaces or not teacher.prunable:
        return (f"no searched network is cut from the teacher (spaces: {', '.join(spaces)}); the built-in "
                "families keep the host predictor")
    return None


def _fit(teacher: Teacher, host: LatencyPredictor, teacher_latency: LatencyReport | None, students: int,
         round_to: int, method: str, measure: MeasureFn) -> Anchored:
    from .search import SPACES

    batch, precision, _ = host._settings()
    shape = teacher.spec.shape
    rows: list[dict[str, Any]] = []
    costs: list[Any] = []
    if teacher_latency is not None and teacher_latency.measured:
        c = layer_costs(teacher.module, shape, batch, precision)
        costs.append(c)
        rows.append({"name": "teacher", "arch": None, "predicted_ms": host.predict_costs(c),
                     "measured_ms": teacher_latency.value()})
    try:
        space = SPACES.get(SPACE)(teacher, round_to=round_to)
        planned = plan_students(space, students)
    except Exception as e:  # noqa: BLE001 - a space the teacher cannot have: the search says so too
        log.warning("no student of the teacher could be planned for the latency correction: %s", first_line(e))
        space, planned = None, []
    for name, arch in planned:
        try:
            module = space.build(arch, teacher).eval()
            c = layer_costs(module, shape, batch, precision)
            report = measure(module, f"anchor-{name}")
        except Exception as e:  # noqa: BLE001 - a student that cannot be timed is left out; say why in one line
            log.warning("student %s could not be timed for the latency correction: %s", name, first_line(e))
            continue
        costs.append(c)
        rows.append({"name": name, "arch": arch, "predicted_ms": host.predict_costs(c),
                     "measured_ms": report.value()})
    rows = [r for r in rows if r["measured_ms"] > 0 and r["predicted_ms"] > 0]
    if not rows:
        return Anchored(host, {"skipped": "neither the teacher nor any of its students could be timed"})
    costs = [c for c, r in zip(costs, rows)]
    coef = fit_correction(host, costs, [r["measured_ms"] for r in rows], method)
    fitted = LatencyPredictor(coef=coef, key=host.key)
    for r, c in zip(rows, costs):
        r["corrected_ms"] = fitted.predict_costs(c)
        r["error_before"] = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        r["error_after"] = (r["corrected_ms"] - r["measured_ms"]) / r["measured_ms"]
    # the correction's typical factor on these networks: corrected / host prediction
    scale = round(statistics.median(r["corrected_ms"] / r["predicted_ms"] for r in rows), 4)
    corrected = CorrectedPredictor(host, coef, {"method": method, "scale": scale,
                                                "students": sum(r["name"] != "teacher" for r in rows)})
    record = {"method": method, "scale": scale, "coef": coef, "host_coef": dict(host.coef or {}),
              "timed": rows, "fit_error": _fit_error(host, costs, rows, method),
              "applies_to": "networks cut from the teacher (teacher_scaled: students, TA, nested sizes); "
                            "the built-in cnn and transformer families keep the host predictor"}
    return Anchored(corrected, record)


def _fit_error(host: LatencyPredictor, costs: list[Any], rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Median and max |error| before and after on the timed networks, and leave-one-out after
    (each network predicted by the correction fitted on the others): an honest figure for unseen ones."""
    before = [abs(r["error_before"]) for r in rows]
    after = [abs(r["error_after"]) for r in rows]
    out: dict[str, Any] = {"median_abs_before": statistics.median(before), "median_abs_after": statistics.median(after),
                           "max_abs_after": max(after), "bias_before": statistics.median(r["error_before"] for r in rows)}
    if len(rows) >= 2:
        loo = []
        for i, r in enumerate(rows):
            rest = [j for j in range(len(rows)) if j != i]
            coef = fit_correction(host, [costs[j] for j in rest], [rows[j]["measured_ms"] for j in rest], method)
            pred = LatencyPredictor(coef=coef, key=host.key).predict_costs(costs[i])
            loo.append(abs(pred - r["measured_ms"]) / r["measured_ms"])
        out["median_abs_leave_one_out"] = statistics.median(loo)
    return out


# ---------------------------------------------------------------------------- saving and resuming

def _save(path: Path, anchored: Anchored, teacher: Teacher) -> None:
    write_json(path, {"teacher_sha256": teacher.sha256, "input_shape": list(teacher.spec.shape),
                      "predictor": anchored.predictor.to_dict() if anchored.corrected else None,
                      "record": anchored.record})


def _saved(path: Path, teacher: Teacher, profile: HardwareProfile) -> Anchored | None:
    """The correction of the run being resumed, when it was made for this teacher and profile; else None."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["teacher_sha256"] != teacher.sha256 or saved["input_shape"] != list(teacher.spec.shape) \
                or saved["record"].get("profile") != profile.name:
            log.warning("%s was made for another teacher or profile; timing again", path)
            return None
        record = dict(saved["record"])
        predictor = predictor_from_dict(saved["predictor"]) if saved["predictor"] is not None else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("%s is unreadable (%s); timing again", path, first_line(e))
        return None
    if predictor is None:  # the step was skipped then: whatever made it skip still holds
        return None
    return Anchored(predictor, record)


def _summary(record: Mapping[str, Any]) -> str:
    """One line: what was timed, how far off the host predictor was, and the correction."""
    if "skipped" in record:
        return f"skipped: {record['skipped']}"
    rows, fit = record.get("timed", []), record.get("fit_error", {})
    students = sum(r["name"] != "teacher" for r in rows)
    who = f"{students} student(s)" + (" and the teacher" if any(r["name"] == "teacher" for r in rows) else "")
    loo = (f", {fit['median_abs_leave_one_out']:.0%} on each one left out of the fit"
           if "median_abs_leave_one_out" in fit else "")
    return (f"{who} timed; the host predictor was {fit.get('bias_before', 0):+.0%} off, corrected "
            f"({record.get('method')}) x{record.get('scale', 1):.2f}: now within "
            f"{fit.get('median_abs_after', 0):.0%} (median){loo}")
