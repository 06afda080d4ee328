"""Manifest: atomic round trip, one-line validation errors, the documented example is valid."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from compressor.errors import ConfigError
from compressor.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    example_manifest,
    read_manifest,
    relative_path,
    resolve_path,
    validate_manifest,
    write_manifest,
)
from compressor.types import LatencyReport


def test_round_trip(tmp_path: Path) -> None:
    m = example_manifest()
    path = write_manifest(tmp_path, m)
    assert path == tmp_path / MANIFEST_NAME
    assert read_manifest(tmp_path) == m
    assert read_manifest(path) == m  # the file itself works too
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temp file left behind


def test_records_and_non_finite_numbers_are_written_as_json(tmp_path: Path) -> None:
    m = example_manifest()
    m["models"][0]["latency"]["host-cpu-1t"] = LatencyReport.predicted("host-cpu-1t", "p50", 1.9)
    m["models"][0]["onnx_max_abs_diff"] = float("inf")  # ORT could not run it
    m["models"][0]["parity_ok"] = False
    write_manifest(tmp_path, m)
    text = (tmp_path / MANIFEST_NAME).read_text()
    assert "Infinity" not in text and "NaN" not in text
    back = read_manifest(tmp_path)
    assert back["models"][0]["onnx_max_abs_diff"] is None
    assert back["models"][0]["latency"]["host-cpu-1t"]["measured"] is False


def _broken(path: str, value: object = ..., delete: bool = False) -> dict:
    m = copy.deepcopy(example_manifest())
    *parents, last = path.split(".")
    node = m
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return m


@pytest.mark.parametrize(("path", "value", "delete", "message"), [
    ("teacher", None, True, "missing required key 'teacher'"),
    ("models.1.accuracy", "high", False, "models[1].accuracy: must be a number, got 'high'"),
    ("models.0.parity_ok", 1, False, "models[0].parity_ok: must be true or false"),
    ("models.0.params", True, False, "models[0].params: must be an integer, got True"),
    ("budget.stat", "p75", False, "budget.stat: must be one of p50, p90, p99"),
    ("models.2.files", None, True, "models[2]: missing required key 'files'"),
    ("selected", "s999", False, "selected: 's999' is not one of the models"),
    ("budget.ms", -1, False, "budget.ms: must be positive"),
    ("tensorrt.available", "no", False, "tensorrt.available: must be true or false"),
    ("search.pareto.0.est_latency_ms", "slow", False, "search.pareto[0].est_latency_ms: must be a number"),
])
def test_validation_errors_name_the_key_in_one_line(path: str, value: object, delete: bool, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_manifest(_broken(path, value, delete))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_cross_checks() -> None:
    m = example_manifest()
    m["models"][1]["name"] = "s100"
    m["selected"] = "s100"
    with pytest.raises(ConfigError, match="duplicate size names"):
        validate_manifest(m)
    m = example_manifest()
    m["selected"] = None
    with pytest.raises(ConfigError, match="budget_met: is true but no model is selected"):
        validate_manifest(m)
    m = example_manifest()
    m["models"][0]["latency"]["host-cpu-1t"]["profile"] = "other"
    with pytest.raises(ConfigError, match="expected 'host-cpu-1t'"):
        validate_manifest(m)


def test_unknown_keys_are_allowed_for_forward_compatibility() -> None:
    m = example_manifest()
    m["future_section"] = {"x": 1}
    m["models"][0]["files"]["coreml"] = "s100.mlpackage"
    validate_manifest(m)


def test_optional_sections_may_be_absent(tmp_path: Path) -> None:
    m = example_manifest()
    del m["search"], m["training"], m["models"][1]["int8"]
    write_manifest(tmp_path, m)
    assert "search" not in read_manifest(tmp_path)


def test_invalid_manifest_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_manifest(tmp_path, _broken("models", None, delete=True))
    assert not any(tmp_path.iterdir())


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**example_manifest(), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ConfigError, match="schema_version"):
        read_manifest(tmp_path)
    with pytest.raises(ConfigError, match="schema_version"):
        write_manifest(tmp_path, {**example_manifest(), "schema_version": 99})


def test_run_relative_paths(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    assert relative_path(run, run / "models" / "s50.onnx") == "models/s50.onnx"
    assert resolve_path(run, "models/s50.onnx") == run / "models" / "s50.onnx"
    assert resolve_path(run, str(tmp_path / "x.onnx")) == tmp_path / "x.onnx"
    with pytest.raises(ConfigError, match="outside the run folder"):
        relative_path(run, tmp_path / "x.onnx")


def test_history_accepts_one_accuracy_per_epoch() -> None:
    m = example_manifest()
    m["training"]["history"] = [{"epoch": 1, "loss": 0.5, "val_acc": 0.9}]
    validate_manifest(m)
    m["training"]["history"][0]["val_acc"] = "high"
    with pytest.raises(ConfigError, match="must be a number or a mapping"):
        validate_manifest(m)


def test_paths_written_from_the_working_directory_become_run_relative(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = Path("runs/x")
    (run / "models" / "s50").mkdir(parents=True)
    (run / "models" / "s50" / "model.onnx").write_bytes(b"")
    (run / "s25.onnx").write_bytes(b"")
    m = example_manifest()
    m["models"][1]["files"]["onnx"] = "runs/x/models/s50/model.onnx"  # relative to the working directory
    m["models"][1]["int8"]["file"] = str(tmp_path / "runs/x/models/s50/model.onnx")  # absolute
    m["models"][2]["files"]["onnx"] = "s25.onnx"  # already run-relative
    m["models"][0]["files"]["onnx"] = "/elsewhere/s100.onnx"  # outside the run folder: kept
    write_manifest(run, m)
    back = read_manifest(run)["models"]
    assert back[1]["files"]["onnx"] == "models/s50/model.onnx"
    assert back[1]["int8"]["file"] == "models/s50/model.onnx"
    assert back[2]["files"]["onnx"] == "s25.onnx"
    assert back[0]["files"]["onnx"] == "/elsewhere/s100.onnx"


def test_training_rollbacks_are_checked_and_shown_in_the_time_table() -> None:
    from compressor.report._view import time_rows

    m = copy.deepcopy(example_manifest())
    m.setdefault("training", {})["rollbacks"] = [
        {"epoch": 3, "loss": "nan", "best_loss": 14.9, "accuracy": 0.2, "best_accuracy": 0.95, "back_to": 2,
         "lr_scale": 0.3}]
    m["training"]["train_seconds"] = 13.0
    m["training"]["history"] = [{"epoch": e, "loss": 1.0} for e in range(1, 13)]
    m["stages"] = {**(m.get("stages") or {}), "distill": 14.0}
    validate_manifest(m)
    distill = next(row for row in time_rows(m) if row[0] == "distill")
    assert "12 epochs" in distill[3] and "1.0 s each" in distill[3] and "diverged 1x" in distill[3]
    from compressor.report._view import flags

    assert any("diverged in epoch 3 (loss nan): rolled back to the end of epoch 2" in f and "0.3x" in f
               for f in flags(m))
    m["training"]["rollbacks"][0]["loss"] = 22.5
    assert any("training accuracy 20" in f and "best 95" in f for f in flags(m))
    m["training"]["rollbacks"][0]["back_to"] = "two"
    with pytest.raises(ConfigError, match=r"training.rollbacks\[0\].back_to: must be an integer"):
        validate_manifest(m)


def test_a_bfloat16_run_that_went_on_in_float32_is_checked_and_told() -> None:
    from compressor.report._view import time_rows

    m = copy.deepcopy(example_manifest())
    m.setdefault("training", {}).update(precision="bf16", train_seconds=12.0, precision_fallback_epoch=3,
                                        history=[{"epoch": e, "loss": 1.0} for e in range(1, 13)])
    m["stages"] = {**(m.get("stages") or {}), "distill": 12.5}
    validate_manifest(m)
    distill = next(row for row in time_rows(m) if row[0] == "distill")
    assert "in bfloat16 (float32 from epoch 3: non-finite bfloat16 gradients)" in distill[3]
    del m["training"]["precision_fallback_epoch"]
    assert "float32 from" not in next(row for row in time_rows(m) if row[0] == "distill")[3]
    m["training"]["precision_fallback_epoch"] = "three"
    with pytest.raises(ConfigError, match=r"training.precision_fallback_epoch: must be an integer"):
        validate_manifest(m)


def test_a_third_measurement_is_checked_and_told() -> None:
    from compressor.report._view import claim_lines

    m = copy.deepcopy(example_manifest())
    lat = m["models"][1]["latency"]["host-cpu-1t"]
    m["verification"] = [{"size": "s50", "first": lat, "second": {**lat, "p50_ms": 1.2},
                          "third": {**lat, "p50_ms": 0.86}, "first_ms": 0.85, "second_ms": 1.2, "third_ms": 0.86,
                          "margin_first": 0.15, "margin_second": -0.2, "margin_third": 0.14, "holds": True}]
    validate_manifest(m)
    line = next(x for x in claim_lines(m) if x.startswith("s50 re-measured"))
    assert "then again 0.86 ms (margin +14.0%) as the first two disagreed" in line and "the claim holds" in line
    m["verification"][0]["third"] = {"p50_ms": "fast"}
    with pytest.raises(ConfigError, match=r"verification\[0\].third"):
        validate_manifest(m)
