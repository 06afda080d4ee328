"""The Optuna study: budget constraint, Pareto front, failures, resume, shared storage."""
import json
import logging

import optuna
import pytest
import torch
from optuna.trial import TrialState

from compressor.budget import Budget
from compressor import prune as P
from compressor.errors import ConfigError
from compressor.search import SearchConfig, build_arch, run_search
from compressor.types import Teacher
from tiny_models import lifted_teacher

FAST = dict(spaces=("cnn",), n_trials=6, batch_size=16, reference_pool=3, population_size=4)


@pytest.fixture(scope="module")
def teacher():
    return lifted_teacher()


class MacsLatency:
    """A stand-in for the hardware predictor: 1 ms per 100k MACs; counts its calls."""

    def __init__(self, fail_every: int = 0, interrupt_at: int = 0) -> None:
        self.calls, self.fail_every, self.interrupt_at = 0, fail_every, interrupt_at

    def __call__(self, model) -> float:
        self.calls += 1
        if self.interrupt_at and self.calls == self.interrupt_at:
            raise KeyboardInterrupt  # the user stops the search
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("cannot time this network")
        return P.count_macs(model, torch.zeros(1, 1, 8, 8)) / 1e5


def _search(teacher, data, tmp_path, budget=2.0, latency=None, storage=None, resume=False, **cfg):
    return run_search(teacher, data, latency_fn=latency or MacsLatency(), budget=Budget(budget, f"{budget}ms", "host-cpu-1t"),
                      teacher_latency_ms=10.0,
                      config=SearchConfig(**{**FAST, **cfg}), run_dir=tmp_path, storage=storage, resume=resume)


def _load(result):
    return optuna.load_study(study_name=result.study_name, storage=result.storage)


def test_search_picks_a_feasible_student_and_a_nesting_assistant(teacher, digits8, tmp_path):
    res = _search(teacher, digits8, tmp_path, spaces=("teacher_scaled", "cnn"), n_trials=8)
    assert res.feasible and res.student.est_latency_ms <= 2.0
    assert res.n_trials == 8 and (tmp_path / "search.db").exists()
    assert res.ta.arch["student_ratio"] and res.ta.est_latency_ms <= 10.0
    assert res.pareto and all(c.est_latency_ms <= 2.0 for c in res.pareto)
    assert res.student.trial_number in {c.trial_number for c in res.pareto}
    ta = build_arch(res.ta.arch, teacher)
    assert ta(digits8.x_val[:2]).shape == (2, 10)
    trial = _load(res).trials[res.student.trial_number]
    assert set(trial.user_attrs) >= {"arch", "proxy_terms", "proxy_scores", "latency_ms", "params", "macs"}
    assert {"diswot_inherited+params", "diswot_inh_sem", "diswot_inh_rel", "params", "macs"} <= set(res.student.proxy_scores)
    assert "proxy_reference" in _load(res).user_attrs  # the scale every worker and resume normalises with
    assert trial.constraints == {"latency": pytest.approx(trial.user_attrs["latency_ms"] - 2.0)}
    # the teacher's cuts keep a signal: none is skipped as one whose outputs ignore the input
    assert not [t for t in _load(res).trials if t.user_attrs.get("fail_reason", "").startswith("signal")]


class _Silenced(torch.nn.Module):
    """A cut whose outputs no longer depend on its input (what a quarter of SqueezeNet's channels gives)."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) * 1e-6 + self.net(torch.zeros_like(x))


def test_a_cut_whose_outputs_ignore_the_input_is_skipped_with_the_reason(teacher, digits8, tmp_path, monkeypatch,
                                                                         caplog):
    from compressor.search.spaces import TeacherScaledSpace

    build = TeacherScaledSpace.build

    def silenced_when_narrowed(self, arch, t):
        net = build(self, arch, t)
        return _Silenced(net) if any(r < 1 for r in arch["ratios"].values()) or arch.get("drop") else net

    monkeypatch.setattr(TeacherScaledSpace, "build", silenced_when_narrowed)
    caplog.set_level("WARNING", logger="compressor.search.study")
    res = _search(teacher, digits8, tmp_path, spaces=("teacher_scaled", "cnn"), n_trials=8)
    trials = _load(res).trials
    silenced = [t for t in trials if t.user_attrs.get("fail_reason", "").startswith("signal")]
    assert silenced and res.n_failed >= len(silenced)
    assert all("outputs hardly vary with its input" in t.user_attrs["fail_reason"] for t in silenced)
    assert all(t.params.get("space") == "teacher_scaled" for t in silenced)
    assert res.student.trial_number not in {t.number for t in silenced}
    assert any("outputs hardly vary" in r.getMessage() for r in caplog.records)


def test_an_impossible_budget_returns_the_fastest_student_marked_infeasible(teacher, digits8, tmp_path):
    res = _search(teacher, digits8, tmp_path, budget=1e-6, n_trials=4)
    assert not res.feasible
    fastest = min(t.user_attrs["latency_ms"] for t in _load(res).trials if t.state == TrialState.COMPLETE)
    assert res.student.est_latency_ms == fastest


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_failing_candidates_do_not_end_the_search(teacher, digits8, tmp_path, sampler):
    res = _search(teacher, digits8, tmp_path, latency=MacsLatency(fail_every=2), sampler=sampler)
    study = _load(res)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and res.n_failed == len(failed) and res.n_trials == 6
    assert all(t.user_attrs["fail_reason"].startswith("latency: RuntimeError") for t in failed)
    assert res.student.trial_number not in {t.number for t in failed}


def test_a_failing_candidate_is_one_warning_line_not_a_traceback(teacher, digits8, tmp_path, caplog):
    caplog.set_level("WARNING", logger="compressor.search.study")
    optuna_records: list[logging.LogRecord] = []
    seen = logging.Handler()
    seen.emit = optuna_records.append  # Optuna logs through its own handler, not the root's
    logging.getLogger("optuna").addHandler(seen)
    try:
        res = _search(teacher, digits8, tmp_path, latency=MacsLatency(fail_every=2))
    finally:
        logging.getLogger("optuna").removeHandler(seen)
    assert res.n_failed
    skipped = [r for r in caplog.records if "candidate skipped" in r.getMessage()]
    assert len(skipped) == res.n_failed
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in skipped)
    assert not [r.getMessage() for r in optuna_records if r.levelno >= logging.WARNING]


def test_a_space_the_teacher_cannot_have_is_one_line(teacher, digits8, tmp_path, monkeypatch, caplog):
    from compressor.search.spaces import TeacherScaledSpace

    def broken(*_a, **_k):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(TeacherScaledSpace, "__init__", broken)
    caplog.set_level("WARNING", logger="compressor.search.study")  # a CLI run earlier in this process may have quieted it
    res = _search(teacher, digits8, tmp_path, spaces=("teacher_scaled", "cnn"), n_trials=4)
    assert res.student.arch["space"] == "cnn"
    assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()] == [
        "search space teacher_scaled is unavailable: ZeroDivisionError: integer division or modulo by zero"]


def test_a_stopped_search_resumes_without_redoing_finished_trials(teacher, digits8, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _search(teacher, digits8, tmp_path, latency=MacsLatency(interrupt_at=4))
    study = optuna.load_study(study_name="student-search", storage=f"sqlite:///{tmp_path / 'search.db'}")
    before = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(before) == 3
    res = _search(teacher, digits8, tmp_path, resume=True)
    after = _load(res).trials
    assert {t.number: t.values for t in after if t.number in before} == before  # not redone
    assert res.n_trials == 6  # the interrupted trial does not count; three more ran
    assert len([t for t in after if t.state == TrialState.COMPLETE]) == 6


def _archs(result) -> list[str]:
    """The finished trials' architectures, in the order they finished."""
    import json

    trials = [t for t in _load(result).trials if t.state == TrialState.COMPLETE]
    return [json.dumps(t.user_attrs["arch"], sort_keys=True) for t in sorted(trials, key=lambda t: t.number)]


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_a_resumed_search_proposes_what_an_uninterrupted_one_does(teacher, digits8, tmp_path, sampler):
    """Draws are keyed on the finished-trial count, so the trial cut short and redone on resume
    is the same candidate, and so is every one after it (past the first NSGA-II generation)."""
    whole = _search(teacher, digits8, tmp_path / "whole", sampler=sampler, n_trials=9)
    with pytest.raises(KeyboardInterrupt):
        _search(teacher, digits8, tmp_path / "cut", sampler=sampler, n_trials=9, latency=MacsLatency(interrupt_at=6))
    resumed = _search(teacher, digits8, tmp_path / "cut", sampler=sampler, n_trials=9, resume=True)
    assert _archs(resumed) == _archs(whole) and len(set(_archs(whole))) > 4
    assert resumed.student.arch == whole.student.arch


def test_resume_checks_the_study_was_run_with_the_same_settings(teacher, digits8, tmp_path):
    _search(teacher, digits8, tmp_path, n_trials=2)
    with pytest.raises(ConfigError, match="budget_ms"):
        _search(teacher, digits8, tmp_path, budget=3.0, n_trials=3, resume=True)


def test_journal_storage_is_shared_by_workers(teacher, digits8, tmp_path):
    journal = tmp_path / "shared" / "study.journal"
    first = _search(teacher, digits8, tmp_path / "a", storage=str(journal), n_trials=4)
    assert journal.exists() and first.storage == str(journal)
    latency = MacsLatency()
    second = _search(teacher, digits8, tmp_path / "b", storage=str(journal), n_trials=5, latency=latency)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="student-search", storage=storage).trials
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 5
    assert second.n_trials == 5  # the second worker ran only the one trial left


def test_config_is_validated():
    with pytest.raises(ConfigError):
        SearchConfig(proxy="nope")
    with pytest.raises(ConfigError):
        SearchConfig(spaces=("resnet",))
    with pytest.raises(ConfigError):
        SearchConfig(n_trials=0)


def test_bad_storage_is_a_config_error(teacher, digits8, tmp_path):
    with pytest.raises(ConfigError):
        _search(teacher, digits8, tmp_path, storage="study.txt")


def test_an_opaque_teacher_falls_back_to_a_teacher_free_proxy(teacher, digits8, tmp_path):
    from compressor.intake.teacher import InferenceOnly

    # a TorchScript teacher that could not be lifted: no Conv/Linear modules for DisWOT to read
    opaque = Teacher(InferenceOnly(torch.jit.trace(teacher.module, torch.zeros(2, 1, 8, 8))), teacher.spec,
                     "x", "torchscript", "sha", prunable=False)
    res = _search(opaque, digits8, tmp_path, n_trials=3)
    assert "snip+params" in res.student.proxy_scores and "diswot_inherited+params" not in res.student.proxy_scores


def test_a_candidate_already_scored_is_drawn_again_not_scored_twice(teacher, digits8, tmp_path):
    latency = MacsLatency()
    res = _search(teacher, digits8, tmp_path, n_trials=12, latency=latency)
    trials = _load(res).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    archs = _archs(res)
    assert len(complete) == res.n_trials == 12 and len(set(archs)) == 12  # every scored candidate is new
    # one latency per candidate, the reference pool's 3 at most, and the assistant's widenings
    widenings = len(SearchConfig().ta_factors) + len(SearchConfig().ta_reach)
    assert latency.calls <= 12 + 3 + widenings
    redrawn = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert all(t.state == TrialState.PRUNED for t in redrawn)
    assert all(json.dumps(t.params, sort_keys=True) for t in redrawn)  # drawn, then set aside unscored


def test_the_widest_uniform_teacher_cut_in_budget_is_scored_first(teacher, digits8, tmp_path):
    """The hand-pruning baseline, a uniform cut of the whole teacher, is always among the candidates:
    the widest ratio whose predicted latency fits, the next ratio up not fitting."""
    from compressor.search.spaces import TeacherScaledSpace

    latency = MacsLatency()
    space = TeacherScaledSpace(teacher, round_to=8)
    full = latency(teacher.module)
    budget = 0.6 * full  # between uniform cuts: some ratio fits, the teacher does not
    res = _search(teacher, digits8, tmp_path, budget=budget, spaces=("teacher_scaled",), n_trials=4, latency=latency)
    archs = [t.user_attrs["arch"] for t in _load(res).trials if t.state == TrialState.COMPLETE]
    uniform = [a for a in archs if not a["drop"] and len(set(a["ratios"].values())) == 1]
    assert uniform, archs
    r = uniform[0]["ratios"]
    ratio = next(iter(r.values()))
    assert latency(space.build(uniform[0], teacher)) <= budget
    wider = TeacherScaledSpace.ratios[TeacherScaledSpace.ratios.index(ratio) + 1]
    assert latency(space.build({**uniform[0], "ratios": {k: wider for k in r}}, teacher)) > budget
