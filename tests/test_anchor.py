"""The latency predictor corrected on the teacher's own operator mix before the search (`anchor`).

Timing is replaced by a stand-in that measures a fixed multiple of the host predictor, so the
correction has a known answer and every decision is deterministic."""
from __future__ import annotations

import json
import random

import pytest
import torch

from compressor import prune as P
from compressor.anchor import RECORD_NAME, Anchored, anchor_predictor, plan_students
from compressor.config import resolve_config
from compressor.errors import ConfigError
from compressor.families import build_family
from compressor.hardware import load_profile
from compressor.hardware.corrected import METHODS, CorrectedPredictor, predictor_from_dict
from compressor.hardware.predict import LatencyPredictor
from compressor.progress import Progress
from compressor.search.spaces import TeacherScaledSpace
from compressor.types import LatencyReport, Teacher
from tiny_models import lifted_teacher

SHAPE = (1, 8, 8)
HOST = LatencyPredictor(coef={"dense_mflops": 0.01, "grouped_mflops": 0.03, "activation_mb": 0.02,
                              "weight_mb": 0.0, "kernels": 0.0, "const": 0.005},
                        key={"profile": "host-cpu-1t", "batch_size": 1, "precision": "fp32", "channel_block": 1})


def report(ms: float) -> LatencyReport:
    return LatencyReport(profile="host-cpu-1t", stat="p50", p50_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms,
                         std_ms=0.0, cov=0.0, samples=15, measured=True)


class Bench:
    """Stands in for exporting and timing: `factor` times the host prediction, plus `per_kernel` ms a layer."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor, self.timed = factor, []

    def __call__(self, module: torch.nn.Module, name: str) -> LatencyReport:
        self.timed.append(name)
        return report(self.factor * HOST.predict_ms(module, SHAPE))


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return lifted_teacher()


def anchor(teacher, digits8, folder, bench=None, *, students=4, resume=False, profile="host-cpu-1t",
           spaces=("teacher_scaled", "cnn"), method="refit", predictor=HOST, factor=2.0) -> Anchored:
    with Progress(enabled=False) as progress:
        return anchor_predictor(teacher, predictor, digits8.x_train[:2], profile=load_profile(profile),
                                teacher_latency=report(factor * HOST.predict_ms(teacher.module, SHAPE)),
                                spaces=spaces, students=students, round_to=8, search_dir=folder, resume=resume,
                                progress=progress, method=method, measure=bench or Bench(factor))


def held_out(teacher, n=5):
    """Students of the teacher's space the correction was not fitted on."""
    space = TeacherScaledSpace(teacher)

    class Pick:
        rng = random.Random(1)

        def suggest_categorical(self, name, choices):
            return self.rng.choice(list(choices))
    return [space.build(space.suggest(Pick()), teacher) for _ in range(n)]


@pytest.mark.parametrize("method", METHODS)
def test_a_stand_in_twice_as_slow_as_the_host_predictor_is_recovered(teacher, digits8, tmp_path, method) -> None:
    bench = Bench(2.0)
    anchored = anchor(teacher, digits8, tmp_path, bench, method=method)
    assert anchored.corrected and isinstance(anchored.predictor, CorrectedPredictor)
    record = anchored.record
    assert record["method"] == method and record["scale"] == pytest.approx(2.0, rel=1e-3)
    assert [r["name"] for r in record["timed"]][0] == "teacher" and len(bench.timed) == 4
    assert record["fit_error"]["median_abs_before"] == pytest.approx(0.5, rel=1e-3)
    assert record["fit_error"]["median_abs_after"] < 1e-3 and record["fit_error"]["median_abs_leave_one_out"] < 1e-3
    for student in held_out(teacher):  # students it was not fitted on
        assert anchored.predictor.predict_ms(student, SHAPE) == pytest.approx(2 * HOST.predict_ms(student, SHAPE),
                                                                              rel=1e-3)
    # a network of the built-in CNN family (the host fit's own family) keeps the host prediction
    cnn = build_family({"family": "cnn", "widths": [8, 16], "depths": [1, 1], "kernel": 3}, SHAPE, 10)
    assert anchored.predictor.predict_ms(cnn, SHAPE) == HOST.predict_ms(cnn, SHAPE)


def test_the_students_timed_are_spread_out_in_size(teacher) -> None:
    planned = plan_students(TeacherScaledSpace(teacher), 4)
    assert len(planned) == 4 and len({json.dumps(a, sort_keys=True) for _, a in planned}) == 4
    space = TeacherScaledSpace(teacher)
    macs = [P.count_macs(space.build(a, teacher), torch.zeros(1, *SHAPE)) for _, a in planned]
    assert min(macs) < 0.5 * max(macs) and macs[0] == min(macs)  # the narrowest and shallowest first


def test_the_record_is_saved_and_a_resumed_run_reuses_it_without_timing(teacher, digits8, tmp_path) -> None:
    first = anchor(teacher, digits8, tmp_path)
    saved = json.loads((tmp_path / RECORD_NAME).read_text())
    assert saved["record"] == json.loads(json.dumps(first.record)) and saved["predictor"]["teacher_correction"]

    class Refuses(Bench):
        def __call__(self, module, name):
            raise AssertionError("a resumed run must not time again")

    # even with another host predictor at hand (a recalibrated cache), the run's own correction is reused
    other = LatencyPredictor(coef={**HOST.coef, "const": 1.0}, key=HOST.key)
    again = anchor(teacher, digits8, tmp_path, Refuses(), resume=True, predictor=other)
    assert again.record == json.loads(json.dumps(first.record))
    student = held_out(teacher, 1)[0]
    assert again.predictor.predict_ms(student, SHAPE) == pytest.approx(first.predictor.predict_ms(student, SHAPE))


def test_a_damaged_saved_record_is_timed_again(teacher, digits8, tmp_path, caplog) -> None:
    (tmp_path / RECORD_NAME).write_text("{not json")
    bench = Bench()
    anchored = anchor(teacher, digits8, tmp_path, bench, resume=True)
    assert bench.timed and anchored.corrected and "unreadable" in caplog.text


def test_a_predicted_only_profile_skips_the_step_and_says_so(teacher, digits8, tmp_path, predicted_profile) -> None:
    bench = Bench()
    anchored = anchor(teacher, digits8, tmp_path, bench, profile=predicted_profile)
    assert anchored.predictor is HOST and not anchored.corrected and not bench.timed
    assert "predicted only" in anchored.record["skipped"] and "timed" not in anchored.record


@pytest.mark.parametrize(("kwargs", "why"), [({"students": 0}, "turned off"),
                                             ({"spaces": ("cnn",)}, "no searched network is cut from the teacher")])
def test_the_step_is_skipped_where_it_has_nothing_to_correct(teacher, digits8, tmp_path, kwargs, why) -> None:
    bench = Bench()
    anchored = anchor(teacher, digits8, tmp_path, bench, **kwargs)
    assert anchored.predictor is HOST and why in anchored.record["skipped"] and not bench.timed


def test_a_student_that_cannot_be_timed_is_one_warning_line(teacher, digits8, tmp_path, caplog) -> None:
    class FailsOnce(Bench):
        def __call__(self, module, name):
            if not self.timed:
                self.timed.append(name)
                raise RuntimeError("export failed\nsecond line")
            return super().__call__(module, name)

    anchored = anchor(teacher, digits8, tmp_path, FailsOnce())
    assert anchored.corrected and len(anchored.record["timed"]) == 4  # the teacher and 3 of the 4 students
    lines = [r.getMessage() for r in caplog.records if "could not be timed" in r.getMessage()]
    assert len(lines) == 1 and "second line" not in lines[0] and not caplog.records[0].exc_info


def test_a_search_worker_rebuilds_the_corrected_predictor_from_the_study(teacher, digits8, tmp_path) -> None:
    anchored = anchor(teacher, digits8, tmp_path)
    rebuilt = predictor_from_dict(json.loads(json.dumps(anchored.predictor.to_dict())))
    student = held_out(teacher, 1)[0]
    assert isinstance(rebuilt, CorrectedPredictor)
    assert rebuilt.predict_ms(student, SHAPE) == pytest.approx(anchored.predictor.predict_ms(student, SHAPE))
    assert isinstance(predictor_from_dict(HOST.to_dict()), LatencyPredictor)


def test_anchor_students_is_an_option_checked_up_front() -> None:
    base = {"teacher": "t.pt", "budget": "1ms"}
    assert resolve_config({}, base).anchor_students == 4
    assert resolve_config({"anchor_students": 0}, base).anchor_students == 0
    for bad in (-1, 7):
        with pytest.raises(ConfigError, match="anchor_students"):
            resolve_config({}, {**base, "anchor_students": bad})


class _Stop(Exception):
    pass


def test_the_search_and_the_check_before_training_judge_on_the_corrected_predictor(
        tiny_teacher_files, tmp_path, monkeypatch) -> None:
    """The run hands the anchored predictor to the search and to `premeasure` (and so to size planning)."""
    from compressor import pipeline

    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path / "cache"))

    class Marked:
        method = "marked"

        def predict_ms(self, module, shape):
            return 123.0

        def to_dict(self):
            return {}

    seen = {}

    def fake_anchor(*args, **kwargs):
        seen["anchor"] = kwargs
        return Anchored(Marked(), {"method": "refit"})

    def fake_search(teacher, data, *, latency_fn, **kwargs):
        seen["search"] = latency_fn(teacher.module)
        return "searched"

    def fake_premeasure(result, teacher, example, *, latency_fn, **kwargs):
        seen["premeasure"] = (result, latency_fn(teacher.module))
        raise _Stop

    monkeypatch.setattr(pipeline, "anchor_predictor", fake_anchor)
    monkeypatch.setattr(pipeline, "run_search", fake_search)
    monkeypatch.setattr(pipeline, "premeasure", fake_premeasure)
    cfg = resolve_config({}, {"teacher": str(tiny_teacher_files["export"]), "budget": "10s", "image_size": 8,
                              "calibration_models": 6, "progress": False, "out": str(tmp_path / "run")})
    with pytest.raises(_Stop):
        pipeline.run(cfg)
    assert seen["anchor"]["students"] == 4 and seen["anchor"]["teacher_latency"].measured
    assert seen["search"] == 123.0 and seen["premeasure"] == ("searched", 123.0)
