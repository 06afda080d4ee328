"""Serving-time picker on a manifest with fixed figures (no timing, no training)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compressor.errors import BudgetNotMetError, ConfigError
from compressor.manifest import example_manifest, write_manifest
from compressor.pick import Pick, cmd_pick, load_session, pick

# Fixed figures of example_manifest(), p50 ms:
#   size  acc    host-cpu-1t (measured)  jetson-orin-nano (predicted)
#   s100  0.981  1.9                     0.70
#   s50   0.972  0.85                    0.32
#   s25   0.941  0.42                    0.15


def _run(tmp_path: Path, edit=None) -> Path:
    m = example_manifest()
    if edit:
        edit(m)
    write_manifest(tmp_path, m)
    return tmp_path


@pytest.mark.parametrize(("budget", "profile", "expected", "measured"), [
    ("1ms", "host-cpu-1t", "s50", True),
    ("0.5ms", "host-cpu-1t", "s25", True),
    ("3ms", "host-cpu-1t", "s100", True),
    ("1900us", "host-cpu-1t", "s100", True),  # equal to the budget fits
    ("0.003s", "host-cpu-1t", "s100", True),
    (0.9, "host-cpu-1t", "s50", True),  # a number is milliseconds
    ("0.5ms", "jetson-orin-nano", "s50", False),
    ("1ms", "jetson-orin-nano", "s100", False),
])
def test_most_accurate_size_within_budget(tmp_path: Path, budget, profile, expected, measured) -> None:
    p = pick(_run(tmp_path), budget, profile)
    assert isinstance(p, Pick)
    assert (p.name, p.measured, p.profile) == (expected, measured, profile)
    assert p.onnx_path == tmp_path / f"{expected}.onnx"
    assert p.latency_ms <= p.budget_ms


def test_defaults_are_the_runs_budget_and_profile(tmp_path: Path) -> None:
    p = pick(_run(tmp_path))
    assert (p.name, p.profile, p.budget_ms, p.latency_ms, p.accuracy) == ("s50", "host-cpu-1t", 1.0, 0.85, 0.972)


def test_nothing_fits_names_the_fastest(tmp_path: Path) -> None:
    with pytest.raises(BudgetNotMetError) as err:
        pick(_run(tmp_path), "0.3ms", "host-cpu-1t")
    assert "s25" in str(err.value) and "0.42 ms" in str(err.value) and "measured" in str(err.value)
    with pytest.raises(BudgetNotMetError, match=r"s25, takes 0.15 ms \(p50, predicted\)"):
        pick(tmp_path, "0.1ms", "jetson-orin-nano")


def test_stat_of_each_profile_is_used(tmp_path: Path) -> None:
    def p99(m):
        for model in m["models"]:
            model["latency"]["host-cpu-1t"]["stat"] = "p99"  # s50 p99 = 0.85 * 1.3 = 1.105 ms

    p = pick(_run(tmp_path, p99), "1ms", "host-cpu-1t")
    assert (p.name, p.stat) == ("s25", "p99")


def test_flagged_sizes_are_skipped_unless_allowed(tmp_path: Path) -> None:
    run = _run(tmp_path, lambda m: m["models"][1].update(parity_ok=False))
    assert pick(run, "1ms", "host-cpu-1t").name == "s25"
    assert pick(run, "1ms", "host-cpu-1t", allow_flagged=True).name == "s50"


def test_ties_go_to_the_faster_size(tmp_path: Path) -> None:
    run = _run(tmp_path, lambda m: m["models"][2].update(accuracy=0.972))
    assert pick(run, "1ms", "host-cpu-1t").name == "s25"


def test_bad_requests(tmp_path: Path) -> None:
    run = _run(tmp_path)
    with pytest.raises(ConfigError, match="no size has a latency on profile 'tpu'.*host-cpu-1t"):
        pick(run, "1ms", "tpu")
    with pytest.raises(ConfigError, match="cannot parse budget"):
        pick(run, "fast", "host-cpu-1t")
    with pytest.raises(ConfigError, match="must be a positive latency"):
        pick(run, 0, "host-cpu-1t")
    with pytest.raises(ConfigError, match="no manifest"):
        pick(tmp_path / "missing", "1ms", "host-cpu-1t")


def test_cmd_pick_prints_only_the_path_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    with pytest.raises(ConfigError, match="missing from the run folder"):
        cmd_pick(run, "1ms", "host-cpu-1t")  # never print a path that does not exist
    (run / "s50.onnx").write_bytes(b"")
    assert cmd_pick(run, "1ms", "host-cpu-1t") == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 's50.onnx'}\n"
    assert "s50" in err and "measured" in err
    with pytest.raises(BudgetNotMetError):
        cmd_pick(tmp_path, "0.01ms", "host-cpu-1t")


def test_load_session_opens_the_chosen_file(tmp_path: Path) -> None:
    from compressor.export import export_onnx

    run = _run(tmp_path)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    export_onnx(model, torch.randn(4, 1, 4, 4), run / "s50.onnx", exporter="torchscript", slim=False)
    choice, session = load_session(run, "1ms", "host-cpu-1t")
    assert choice.name == "s50"
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4), dtype=np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (2, 3)
    with pytest.raises(ConfigError, match="missing"):
        load_session(run, "3ms", "host-cpu-1t")  # s100.onnx was never written


def test_absolute_paths_in_the_manifest_are_used_as_written(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "s50.onnx"
    run = _run(tmp_path / "run", lambda m: m["models"][1]["files"].update(onnx=str(target)))
    assert pick(run, "1ms", "host-cpu-1t").onnx_path == target


def test_a_size_whose_remeasurement_missed_is_not_picked(tmp_path: Path) -> None:
    """The run re-measured s50 in a fresh process and it missed 1 ms: `pick` agrees with the run."""
    def edit(m):
        first = m["models"][1]["latency"]["host-cpu-1t"]
        second = {**first, "p50_ms": 1.2}
        m["verification"] = [{"size": "s50", "first": first, "second": second, "holds": False}]
        m["selected"], m["budget_met"] = "s25", True

    assert pick(_run(tmp_path, edit), "1ms", "host-cpu-1t").name == "s25"
    # judged as the run judged it: 1.2 ms with the two figures' 0.35 ms disagreement as spread
    assert pick(tmp_path, "1.5ms", "host-cpu-1t").name == "s25"
    assert pick(tmp_path, "1.6ms", "host-cpu-1t").name == "s50"
    assert pick(tmp_path, "0.9x", "host-cpu-1t").budget_ms == pytest.approx(0.9 * 3.2)  # relative to the teacher


def test_a_third_measurement_is_judged_as_the_run_judged_it(tmp_path: Path) -> None:
    """s50 measured 0.85 ms, then 1.2 ms in a fresh process (a slow spell), then 0.86: the third agrees
    with the first, so the claim stands on that pair, as in the run (`Budget.claim`)."""
    def edit(m):
        first = m["models"][1]["latency"]["host-cpu-1t"]
        second, third = {**first, "p50_ms": 1.2}, {**first, "p50_ms": first["p50_ms"] + 0.01}
        m["verification"] = [{"size": "s50", "first": first, "second": second, "third": third, "holds": True}]

    assert pick(_run(tmp_path / "three", edit), "1ms", "host-cpu-1t").name == "s50"

    def two_only(m):
        edit(m)
        del m["verification"][0]["third"]
        m["verification"][0]["holds"] = False

    assert pick(_run(tmp_path / "two", two_only), "1ms", "host-cpu-1t").name == "s25"


def test_relative_budget_needs_the_teachers_latency_on_that_profile(tmp_path: Path) -> None:
    def edit(m):
        del m["teacher"]["latency"]["jetson-orin-nano"]

    with pytest.raises(ConfigError, match="relative to the teacher's latency"):
        pick(_run(tmp_path, edit), "0.5x", "jetson-orin-nano")
