"""The `compress profile` / `compress profiles` commands, run in-process."""
from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from compressor.errors import BackendUnavailableError, ConfigError
from compressor.hardware import list_profiles
from compressor.hardware.cli import cmd_profile, cmd_profiles
from compressor.hardware.testing import tiny_onnx

QUICK = """\
name = "quick"
backend = "onnxruntime-cpu"
threads = 1
warmup_runs = 1
warmup_seconds = 0.0
repeats = 10
min_seconds = 0.0
"""


def console() -> Console:
    return Console(record=True, width=120, force_terminal=False)


def test_profiles_lists_every_profile() -> None:
    out = console()
    assert cmd_profiles(console=out) == 0
    text = out.export_text()
    for p in list_profiles():
        assert p.name in text
    assert "predicted" in text and "measured" in text


def test_profile_measures_and_prints_a_table(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    profile = tmp_path / "quick.toml"
    profile.write_text(QUICK)
    out = console()
    assert cmd_profile(str(model), str(profile), None, budget="1s", console=out) == 0
    text = out.export_text()
    assert "quick" in text and "(1, 8, 8)" in text  # shape read from the file
    for word in ("p50", "p90", "p99", "CoV", "samples", "met"):
        assert word in text


def test_profile_with_explicit_shape(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    profile = tmp_path / "quick.toml"
    profile.write_text(QUICK)
    assert cmd_profile(str(model), str(profile), (1, 8, 8), console=console()) == 0
    with pytest.raises(ConfigError, match="dimension 2 = 8"):
        cmd_profile(str(model), str(profile), (1, 4, 4), console=console())


def test_profile_refuses_a_predicted_target(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="predicted only"):
        cmd_profile(str(tiny_onnx(tmp_path / "m.onnx")), "jetson-orin-nano", None, console=console())
