"""The teacher figure a relative budget rests on: the lower of two measurements, the second in a fresh process."""
from __future__ import annotations

import pytest

from compressor.errors import BackendUnavailableError
from compressor.hardware import latency, load_profile, steadier
from compressor.types import LatencyReport


def lat(p50: float, measured: bool = True) -> LatencyReport:
    return LatencyReport(profile="host-cpu-1t", stat="p50", p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50,
                         std_ms=0.0, cov=0.0, samples=100, measured=measured)


@pytest.fixture()
def second(monkeypatch: pytest.MonkeyPatch) -> list:
    """The fresh process's answer, queued by the test (a report, or an exception it raises); a call
    appends the file it was asked to time."""
    served: list = []

    def fake(onnx_path, profile, shape):
        answer = served[0]
        served.append(onnx_path)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(latency, "remeasure_in_fresh_process", fake)
    return served


PROFILE = load_profile("host-cpu-1t")


def test_a_first_figure_taken_during_a_burst_gives_way_to_the_second(second) -> None:
    second.append(lat(1.0))
    kept = steadier(lat(2.1), "t.onnx", PROFILE, (1, 8, 8))
    assert kept.p50_ms == 1.0 and kept.env["measurements_ms"] == [2.1, 1.0]


def test_a_lower_first_figure_stands(second) -> None:
    second.append(lat(1.4))
    kept = steadier(lat(1.0), "t.onnx", PROFILE, (1, 8, 8))
    assert kept.p50_ms == 1.0 and kept.env["measurements_ms"] == [1.0, 1.4]


def test_a_failed_second_measurement_keeps_the_first_unchanged(second) -> None:
    second.append(BackendUnavailableError("child failed"))
    first = lat(1.2)
    assert steadier(first, "t.onnx", PROFILE, (1, 8, 8)) == first


def test_a_prediction_is_not_measured_again(second) -> None:
    predicted = lat(3.0, measured=False)
    assert steadier(predicted, "t.onnx", PROFILE, (1, 8, 8)) == predicted and second == []
