"""Measure before committing: the search's pick and the nested sizes timed untrained, re-selected on a miss.

Timing is replaced by a stand-in (`Bench`: latency from MACs), and the search's predictor is
that same figure divided by 3, so the predictor is wrong by a known factor and every decision
is deterministic."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressor import prune as P
from compressor.budget import Budget
from compressor.config import resolve_config
from compressor.errors import ConfigError
from compressor.hardware import load_profile
from compressor.premeasure import RECORD_NAME, premeasure
from compressor.premeasure import _summary as premeasure_summary
from compressor.progress import Progress
from compressor.search import SearchConfig, build_arch, run_search
from compressor.types import LatencyReport, Teacher
from tiny_models import lifted_teacher

BUDGET = Budget(4.0, "4ms", "host-cpu-1t")
SHAPE = (1, 8, 8)


def true_ms(module: torch.nn.Module) -> float:
    """What the stand-in 'hardware' measures: 1 ms per 100k MACs."""
    return P.count_macs(module, torch.zeros(1, *SHAPE)) / 1e5


def predicted_ms(module: torch.nn.Module) -> float:
    """A deliberately wrong predictor: three times too optimistic."""
    return true_ms(module) / 3


class Bench:
    """Stands in for exporting and timing an untrained network; remembers what it timed.

    It measures `true_ms`; with `candidates_as_predicted`, search candidates measure what the
    predictor says (only the nested sizes are off)."""

    def __init__(self, candidates_as_predicted: bool = False) -> None:
        self.timed: list[str] = []
        self.candidates_as_predicted = candidates_as_predicted

    def __call__(self, module: torch.nn.Module, name: str) -> LatencyReport:
        self.timed.append(name)
        as_predicted = self.candidates_as_predicted and name.startswith("candidate-")
        ms = predicted_ms(module) if as_predicted else true_ms(module)
        return LatencyReport(profile="host-cpu-1t", stat="p50", p50_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms,
                             std_ms=0.0, cov=0.0, samples=30, measured=True)


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return lifted_teacher()


@pytest.fixture(scope="module")
def searched(teacher, digits8, tmp_path_factory):
    """A search judged on the wrong predictor: its pick is predicted within 4 ms but measures about 3x that."""
    return run_search(teacher, digits8, latency_fn=predicted_ms, budget=BUDGET, teacher_latency_ms=10.0,
                      config=SearchConfig(spaces=("cnn",), n_trials=10, batch_size=16, reference_pool=3,
                                          population_size=4),
                      run_dir=tmp_path_factory.mktemp("search"))


def check(result, teacher, digits8, folder: Path, bench=None, *, top: int = 3, resume: bool = False,
          profile: str = "host-cpu-1t", sizes=None, latency_fn=predicted_ms):
    with Progress(enabled=False) as progress:
        return premeasure(result, teacher, digits8.x_train[:2], profile=load_profile(profile),
                          latency_fn=latency_fn, budget=BUDGET, top=top, teacher_latency_ms=10.0, round_to=8,
                          ta_factors=(2.0, 1.5, 1.25), fixed_sizes=sizes, search_dir=folder, resume=resume,
                          progress=progress, measure=bench or Bench())


def test_the_setup_makes_the_searched_student_miss_when_measured(searched, teacher) -> None:
    student = build_arch(searched.student.arch, teacher)
    assert searched.feasible and predicted_ms(student) <= BUDGET.ms < true_ms(student)


def test_a_pick_that_misses_when_measured_is_replaced_by_the_best_that_fits(searched, teacher, digits8,
                                                                            tmp_path) -> None:
    bench = Bench()
    verified = check(searched, teacher, digits8, tmp_path, bench)
    chosen = verified.result.student
    assert chosen.trial_number != searched.student.trial_number and verified.record["reselected"]
    assert true_ms(build_arch(chosen.arch, teacher)) <= BUDGET.ms
    # the best-scoring candidate that fits: every candidate checked before it missed
    cands = [c for c in verified.record["checked"] if c["role"] != "size"]
    assert cands[0]["name"] == "student" and not cands[0]["fits"]
    first_fit = next(c for c in cands if c["fits"])
    assert first_fit["trial_number"] == chosen.trial_number == verified.record["chosen_trial"]
    # a new TA was widened from the chosen student, and it nests it
    assert verified.result.ta.trial_number == chosen.trial_number and verified.result.ta.arch["student_ratio"]
    assert verified.result.ta.arch != searched.ta.arch
    assert any(n.startswith("candidate-") for n in bench.timed) and any(n.startswith("size-") for n in bench.timed)


def test_a_better_scoring_runner_up_off_the_front_beats_a_far_smaller_front_point(searched, teacher, digits8,
                                                                                  tmp_path) -> None:
    """The front's next point after a pick that misses can be far smaller than the budget allows;
    an in-budget candidate the pick dominated (as predicted) that scores better is chosen instead."""
    import dataclasses

    from compressor.types import Candidate

    def cand(widths, score, n):
        arch = {"space": "cnn", "family": "cnn", "widths": widths, "depths": [1, 1], "kernel": 3, "round_to": 8}
        return Candidate(arch=arch, proxy_scores={}, est_latency_ms=predicted_ms(build_arch(arch, teacher)),
                         trial_number=n, score=score)

    small, mid = cand([8, 8], 0.1, 901), cand([16, 16], 0.5, 902)
    result = dataclasses.replace(searched, pareto=(small, searched.student), runners_up=(mid,))
    verified = check(result, teacher, digits8, tmp_path, Bench())
    assert verified.record["reselected"] and verified.result.student.trial_number == 902
    names = [c["name"] for c in verified.record["checked"] if c["role"] != "size"]
    assert names[:2] == ["student", "trial 902"]


def pessimistic_ms(module: torch.nn.Module) -> float:
    """A predictor 2.5x too pessimistic (the host predictor on the smallest CNNs was about that)."""
    return true_ms(module) * 2.5


def test_a_pessimistic_predictor_leads_to_the_best_candidate_it_predicted_over_the_budget(searched, teacher,
                                                                                           digits8, tmp_path) -> None:
    """The pick measures at 12 % of the budget: the search's candidates predicted over it are timed, best
    score first, when they would fit at the measured ratio, and the best-scoring one that fits is taken."""
    import dataclasses

    from compressor.types import Candidate

    def cand(widths, score, n):
        arch = {"space": "cnn", "family": "cnn", "widths": widths, "depths": [1, 1], "kernel": 3, "round_to": 8}
        return Candidate(arch=arch, proxy_scores={}, est_latency_ms=pessimistic_ms(build_arch(arch, teacher)),
                         trial_number=n, score=score)

    # true ms: 0.49, 1.72, 3.68 and 6.39 against the 4 ms budget; predicted 2.5x that
    small, c32, c48, c64 = cand([16, 16], 0.1, 901), cand([32, 32], 0.5, 902), cand([48, 48], 0.7, 903), \
        cand([64, 64], 0.9, 904)
    result = dataclasses.replace(searched, student=small, pareto=(small,), runners_up=(), over_budget=(c64, c48, c32))
    bench = Bench()
    verified = check(result, teacher, digits8, tmp_path, bench, latency_fn=pessimistic_ms)
    record = verified.record
    assert record["reselected"] and record["reselected_up"] and verified.result.student.trial_number == 903
    higher = [c for c in record["checked"] if c["role"] == "higher"]
    # 904 would not fit even at the measured ratio: never timed; 903 is the best-scoring one that does
    assert [c["trial_number"] for c in higher][0] == 903 and "candidate-904" not in bench.timed
    assert verified.result.ta.trial_number == 903 and verified.result.ta.arch["student_ratio"]
    # the sizes are planned at the measured ratio: one in budget close to it, not only far under it
    assert record["sizes_replanned"] and record["size_scale"] == pytest.approx(0.4, rel=0.01)
    last = max(c["plan"] for c in record["checked"] if c["role"] == "size")
    fitting = [c["measured_ms"] for c in record["checked"] if c["role"] == "size" and c["plan"] == last and c["fits"]]
    assert fitting and max(fitting) >= 0.5 * BUDGET.ms
    assert "predicted over the budget" in premeasure_summary(record)


def test_a_ta_that_measures_within_the_budget_is_widened_over_it(searched, teacher, digits8, tmp_path) -> None:
    """A TA widened on a pessimistic predictor (predicted over the budget) that measures within it is
    widened again with the predictor scaled by its measured ratio, as far as the reach goes, and the
    sizes are planned from the wider TA down to the budget."""
    import dataclasses

    from compressor.premeasure import _reselect
    from compressor.types import Candidate

    arch = {"space": "cnn", "family": "cnn", "widths": [16, 16], "depths": [1, 1], "kernel": 3, "round_to": 8}
    small = Candidate(arch=arch, proxy_scores={}, est_latency_ms=pessimistic_ms(build_arch(arch, teacher)),
                      trial_number=901, score=0.1)
    base = dataclasses.replace(searched, student=small, pareto=(small,), runners_up=(), over_budget=())
    # its x2 TA, [32, 32]: predicted 4.3 ms (over the 4 ms budget), measures 1.7 ms
    result = _reselect(base, small, teacher, digits8.x_train[:2], pessimistic_ms, 1.0, 10.0, 8, (2.0,))
    assert result.ta.arch["widths"] == [32, 32] and result.ta.est_latency_ms > BUDGET.ms

    def run(reach):
        with Progress(enabled=False) as progress:
            return premeasure(result, teacher, digits8.x_train[:2], profile=load_profile("host-cpu-1t"),
                              latency_fn=pessimistic_ms, budget=BUDGET, top=3, teacher_latency_ms=10.0, round_to=8,
                              ta_factors=(2.0,), fixed_sizes=None, search_dir=tmp_path / str(len(reach)),
                              resume=False, progress=progress, measure=Bench(), ta_reach=reach)

    verified = run((3.0, 4.0, 6.0))
    record, ta = verified.record, verified.result.ta
    assert record["ta_widened"] and verified.result.student.trial_number == 901
    # x3 ([48, 48], 3.7 ms) would still fit at the measured ratio: x4 ([64, 64], 6.4 ms) is the first over it
    assert ta.arch["widths"] == [64, 64] and true_ms(build_arch(ta.arch, teacher)) > BUDGET.ms
    last = max(c["plan"] for c in record["checked"] if c["role"] == "size")
    final = [c for c in record["checked"] if c["role"] == "size" and c["plan"] == last]
    assert [c["name"] for c in final] == [n for n, _ in verified.sizes] and not final[0]["fits"]
    assert max(c["measured_ms"] for c in final if c["fits"]) >= 0.5 * BUDGET.ms
    assert "widened over it" in premeasure_summary(record)
    # without reach factors the TA stays as searched
    kept = run(())
    assert not kept.record["ta_widened"] and kept.result.ta.arch == result.ta.arch


def test_an_accurate_predictor_times_nothing_predicted_over_the_budget(searched, teacher, digits8, tmp_path) -> None:
    import dataclasses

    from compressor.types import Candidate

    arch = {"space": "cnn", "family": "cnn", "widths": [64, 64], "depths": [1, 1], "kernel": 3, "round_to": 8}
    over = Candidate(arch=arch, proxy_scores={}, est_latency_ms=true_ms(build_arch(arch, teacher)), trial_number=905,
                     score=9.0)
    bench = Bench()
    verified = check(dataclasses.replace(searched, over_budget=(over,)), teacher, digits8, tmp_path, bench,
                     latency_fn=true_ms)
    assert "candidate-905" not in bench.timed and not verified.record["reselected_up"]


def test_nested_sizes_that_miss_are_planned_again_until_those_meant_to_fit_do(searched, teacher, digits8,
                                                                              tmp_path) -> None:
    """The searched student measures as predicted (kept); the TA's sizes measure 3x their prediction."""
    verified = check(searched, teacher, digits8, tmp_path, Bench(candidates_as_predicted=True))
    record = verified.record
    assert not record["reselected"] and verified.result == searched
    scale = record["size_scale"]
    last = max(c["plan"] for c in record["checked"] if c["role"] == "size")
    final = [c for c in record["checked"] if c["role"] == "size" and c["plan"] == last]
    assert [c["name"] for c in final] == [n for n, _ in verified.sizes]
    meant = [c for c in final if scale * c["predicted_ms"] <= BUDGET.ms]
    assert meant and all(c["fits"] for c in meant)
    # the 3x optimistic predictor first planned sizes that missed; they were planned again, scaled
    assert record["sizes_replanned"] and scale == pytest.approx(3.0, rel=0.01) and last >= 1
    first_plan = [c for c in record["checked"] if c["role"] == "size" and c["plan"] == 0]
    assert any(c["predicted_ms"] <= BUDGET.ms and not c["fits"] for c in first_plan)
    assert len(final) >= 3 and final[-1]["fits"] and not final[0]["fits"]  # from the TA down to under the budget


def test_the_record_holds_predicted_measured_and_error_per_check(searched, teacher, digits8, tmp_path) -> None:
    record = check(searched, teacher, digits8, tmp_path).record
    assert record["profile"] == "host-cpu-1t" and record["timing"]["repeats"] > 0 and record["seconds"] >= 0
    assert {c["role"] for c in record["checked"]} == {"student", "candidate", "size"}
    for c in record["checked"]:
        assert c["predicted_ms"] == pytest.approx(c["measured_ms"] / 3)
        assert c["error"] == pytest.approx((c["predicted_ms"] - c["measured_ms"]) / c["measured_ms"])
        assert c["error"] == pytest.approx(-2 / 3) and c["fits"] == (c["measured_ms"] <= BUDGET.ms)
    saved = json.loads((tmp_path / RECORD_NAME).read_text())
    assert saved["record"]["checked"] == record["checked"]


def test_a_predicted_only_profile_skips_the_step_and_says_so(searched, teacher, digits8, tmp_path,
                                                             predicted_profile) -> None:
    bench = Bench()
    verified = check(searched, teacher, digits8, tmp_path, bench, profile=predicted_profile)
    assert verified.result == searched and verified.sizes is None and not bench.timed
    assert "predicted only" in verified.record["skipped"] and "checked" not in verified.record


def test_verify_top_zero_turns_the_step_off(searched, teacher, digits8, tmp_path) -> None:
    bench = Bench()
    verified = check(searched, teacher, digits8, tmp_path, bench, top=0)
    assert verified.result == searched and verified.sizes is None and not bench.timed
    assert "turned off" in verified.record["skipped"]


def test_resume_reuses_the_saved_check_without_measuring(searched, teacher, digits8, tmp_path) -> None:
    first = check(searched, teacher, digits8, tmp_path)

    class Refuses(Bench):
        def __call__(self, module, name):
            raise AssertionError("a resumed run must not measure again")

    again = check(searched, teacher, digits8, tmp_path, Refuses(), resume=True)
    assert again.result == first.result and again.sizes == first.sizes and again.record == first.record


def test_a_damaged_saved_check_is_measured_again(searched, teacher, digits8, tmp_path, caplog) -> None:
    (tmp_path / RECORD_NAME).write_text("{not json")
    bench = Bench()
    verified = check(searched, teacher, digits8, tmp_path, bench, resume=True)
    assert bench.timed and verified.record["reselected"]
    assert "unreadable" in caplog.text and json.loads((tmp_path / RECORD_NAME).read_text())["record"]


def test_a_candidate_that_cannot_be_measured_is_one_warning_line(searched, teacher, digits8, tmp_path,
                                                                 caplog) -> None:
    class FailsOnStudent(Bench):
        def __call__(self, module, name):
            if name == f"candidate-{searched.student.trial_number}":
                raise RuntimeError("export failed\nsecond line")
            return super().__call__(module, name)

    verified = check(searched, teacher, digits8, tmp_path, FailsOnStudent())
    assert verified.record["searched_trial"] == searched.student.trial_number and verified.record["reselected"]
    assert [c["role"] for c in verified.record["checked"]][0] == "candidate"
    lines = [r.getMessage() for r in caplog.records if "could not be measured" in r.getMessage()]
    assert len(lines) == 1 and "second line" not in lines[0] and not caplog.records[0].exc_info


def test_sizes_the_user_fixed_are_measured_not_replanned(searched, teacher, digits8, tmp_path) -> None:
    verified = check(searched, teacher, digits8, tmp_path, sizes=(1.0, 0.5))
    assert [n for n, _ in verified.sizes] == ["w100", "w050"] and not verified.record["sizes_replanned"]
    assert [c["name"] for c in verified.record["checked"] if c["role"] == "size"] == ["w100", "w050"]


def test_verify_top_is_an_option_checked_up_front() -> None:
    base = {"teacher": "t.pt", "budget": "1ms"}
    assert resolve_config({}, base).verify_top == 3
    assert resolve_config({"verify_top": 0}, base).verify_top == 0
    with pytest.raises(ConfigError, match="verify_top"):
        resolve_config({}, {**base, "verify_top": -1})


@pytest.mark.parametrize("quick_spread, timed_again", [(1.0, True), (0.1, False)], ids=["near-miss", "fits"])
def test_a_near_miss_under_the_quick_timing_is_timed_again_with_the_profile_s_own(monkeypatch, tmp_path, teacher,
                                                                                  quick_spread, timed_again):
    """p50 3.5 ms within the 4 ms budget: a quick spread of 1 ms puts it over and the profile's own
    timing (spread 0.1 ms) decides; a quick verdict that fits is kept as it is."""
    from types import SimpleNamespace

    import compressor.premeasure as pm

    profile = load_profile("host-cpu-1t")
    quick_runs: list[bool] = []

    def timed(prof, shape, onnx_path, module):
        quick = prof.repeats < profile.repeats
        quick_runs.append(quick)
        return LatencyReport(profile=prof.name, stat="p50", p50_ms=3.5, p90_ms=3.6, p99_ms=3.7, mean_ms=3.5,
                             std_ms=0.1, cov=0.03, samples=prof.repeats, measured=True,
                             spread_ms=quick_spread if quick else 0.1)

    monkeypatch.setattr(pm, "latency_report", timed)
    monkeypatch.setattr(pm, "export_onnx", lambda module, x, path, slim: SimpleNamespace(path=path))
    measure = pm.quick_measure(profile, SHAPE, torch.zeros(2, *SHAPE), tmp_path, BUDGET)
    report = measure(teacher.module, "candidate-1")
    assert quick_runs == ([True, False] if timed_again else [True])
    assert BUDGET.fits(report)
    # without a budget (the anchor's timing), the quick figure is what it is
    quick_runs.clear()
    assert not BUDGET.fits(pm.quick_measure(profile, SHAPE, torch.zeros(2, *SHAPE), tmp_path)(teacher.module, "c")) \
        or not timed_again
    assert quick_runs == [True]


def test_the_search_keeps_its_candidates_predicted_over_the_budget_within_reach(searched) -> None:
    from compressor.search.study import OVER_BUDGET_REACH

    over = searched.over_budget
    assert over, "the search's 10 trials include some predicted over the 4 ms budget"
    assert all(BUDGET.ms < c.est_latency_ms <= OVER_BUDGET_REACH * BUDGET.ms for c in over)
    assert [c.score for c in over] == sorted((c.score for c in over), reverse=True)
    assert not {c.trial_number for c in over} & {c.trial_number for c in (*searched.pareto, *searched.runners_up)}


def test_a_pick_that_misses_is_not_called_a_pessimistic_predictor(searched, teacher, digits8, tmp_path) -> None:
    """The optimistic predictor's pick misses and is replaced by a smaller one: not a move up."""
    verified = check(searched, teacher, digits8, tmp_path, Bench())
    assert verified.record["reselected"] and not verified.record["reselected_up"]
    assert not [c for c in verified.record["checked"] if c["role"] == "higher"]
