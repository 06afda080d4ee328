"""The budget value: parsed once (absolute or relative), judged by one rule that counts the measurement's spread."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compressor.budget import Budget, parse_budget
from compressor.errors import ConfigError
from compressor.hardware.timing import statistic_spread
from compressor.types import LatencyReport


def report(p50: float, spread: float = 0.0, measured: bool = True, stat: str = "p50") -> LatencyReport:
    return LatencyReport(profile="host-cpu-1t", stat=stat, p50_ms=p50, p90_ms=p50 * 1.1, p99_ms=p50 * 1.3,
                         mean_ms=p50, std_ms=0.0, cov=0.0, samples=100 if measured else 0, measured=measured,
                         spread_ms=spread)


@pytest.mark.parametrize("text,factor", [("0.5x", 0.5), ("0.25 x", 0.25), ("1x", 1.0), ("0.5×", 0.5)])
def test_relative_budget_is_a_fraction_of_the_teachers_latency(text, factor):
    spec = parse_budget(text)
    assert spec.relative and spec.factor == pytest.approx(factor) and spec.ms is None
    budget = spec.resolve("host-cpu-1t", "p50", teacher_ms=2.0)
    assert budget.ms == pytest.approx(2.0 * factor) and budget.teacher_ms == 2.0
    assert budget.to_dict()["factor"] == pytest.approx(factor)
    assert Budget.from_dict(budget.to_dict()) == budget


def test_relative_budget_without_a_teacher_latency_is_one_clear_line():
    with pytest.raises(ConfigError, match="relative to the teacher's latency.*absolute budget"):
        parse_budget("0.5x").resolve("jetson-orin-nano", "p50", teacher_ms=None)


@pytest.mark.parametrize("text", ["0x", "-0.5x", "x", "0.5xx", "half"])
def test_bad_relative_budgets(text):
    with pytest.raises(ConfigError):
        parse_budget(text)


def test_absolute_budget_resolves_to_itself_on_any_profile():
    b = parse_budget("400us").resolve("host-cpu-1t", "p90")
    assert (b.ms, b.profile, b.stat, b.factor) == (pytest.approx(0.4), "host-cpu-1t", "p90", None)


def test_a_size_that_fits_only_by_noise_does_not_fit():
    budget = Budget(0.400, "400us", "host-cpu-1t")
    assert budget.fits(report(0.390, spread=0.005))  # 2.5 % under, spread 1.25 %
    assert not budget.fits(report(0.398, spread=0.005))  # 0.5 % under: inside its own noise
    assert budget.fits(report(0.398))  # no spread (e.g. identical timings): the statistic alone
    assert budget.margin(report(0.398, spread=0.005)) == pytest.approx(0.005)  # margin is on the statistic
    assert budget.fits(0.399) and not budget.fits(0.401)  # predicted figures as plain numbers


def test_fits_uses_the_budgets_statistic():
    budget = Budget(1.0, "1ms", "host-cpu-1t", stat="p90")
    assert not budget.fits(report(0.95))  # p90 = 1.045
    assert Budget(1.0, "1ms", "host-cpu-1t").fits(report(0.95))


def test_spread_grows_with_drift_within_the_measurement():
    rng = np.random.default_rng(0)
    steady = 0.4 + 0.002 * rng.standard_normal(500)
    drifting = steady + np.linspace(0.0, 0.04, 500)  # the machine got 10 % slower during the run
    assert statistic_spread(drifting, "p50") > 5 * statistic_spread(steady, "p50")
    assert statistic_spread(np.full(500, 0.4), "p50") == 0.0
    short = statistic_spread(steady[:20], "p50")  # too few runs for blocks: twice the median's standard error
    assert 0 < short < 0.01


def test_latency_report_round_trips_through_a_manifest_dict():
    from compressor.types import to_jsonable

    r = dataclasses.replace(report(0.5, spread=0.01), warnings=("noisy",), env={"threads": 1})
    assert LatencyReport.from_dict(to_jsonable(r)) == r
    old = {k: v for k, v in to_jsonable(r).items() if k != "spread_ms"}  # manifests written before spread_ms
    assert LatencyReport.from_dict(old).spread_ms == 0.0
