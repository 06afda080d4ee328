"""The run record: typed values in, the one manifest dict out; and the file room's atomic writes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.budget import Budget
from compressor.files import atomic_output, sha256_file, write_json, write_text
from compressor.manifest import read_manifest, validate_manifest, write_manifest
from compressor.record import (
    Int8Record,
    RunRecord,
    SizeRecord,
    TeacherRecord,
    Verification,
    runtime_versions,
    to_manifest,
)
from compressor.types import LatencyReport


def lat(p50: float, spread: float = 0.0, profile: str = "host-cpu-1t", measured: bool = True) -> LatencyReport:
    return LatencyReport(profile=profile, stat="p50", p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50, std_ms=0.0,
                         cov=0.0, samples=100 if measured else 0, measured=measured, spread_ms=spread)


def run_record(selected: str | None = "w050") -> RunRecord:
    budget = Budget(ms=0.5, text="0.5x", profile="host-cpu-1t", factor=0.5, teacher_ms=1.0)
    teacher = TeacherRecord(path="t.pt", sha256="f" * 64, format="torchscript", prunable=True, input_shape=(1, 8, 8),
                            num_classes=10, params=1000, macs=10_000, accuracy=0.97, latency={"host-cpu-1t": lat(1.0)})
    sizes = tuple(
        SizeRecord(name=n, ratio=r, params=int(1000 * r), macs=int(10_000 * r), accuracy=0.9 + r / 20,
                   teacher_agreement=0.95, onnx_max_abs_diff=1e-6, parity_ok=True, opset=18,
                   latency={"host-cpu-1t": lat(r * 0.9, 0.01), "raspberry-pi-5": lat(r * 3, measured=False,
                                                                                     profile="raspberry-pi-5")},
                   files={"onnx": f"models/{n}/model.onnx"}, meets_budget=budget.fits(lat(r * 0.9, 0.01)),
                   sha256={"onnx": "0" * 64},
                   int8=Int8Record(file=f"models/{n}/model.int8.onnx", accuracy=0.9, agreement_with_fp32=0.995,
                                   settings={"cpu_class": "x86-avx2", "reduce_range": True},
                                   latency={"host-cpu-1t": lat(r)}, speedup=0.9,
                                   note="INT8 is not faster than fp32 on host-cpu-1t (0.90x); serve the fp32 model"))
        for n, r in (("w100", 1.0), ("w050", 0.5)))
    check = Verification(size="w050", first=sizes[1].latency["host-cpu-1t"], second=lat(0.46, 0.01), holds=True)
    return RunRecord(config={"teacher": "t.pt", "budget": "0.5x"}, budget=budget, teacher=teacher, sizes=sizes,
                     selected=selected, verification=(check,), stages={"intake": 1.0}, seconds=2.0)


def test_manifest_from_records_is_valid_and_is_what_the_file_holds(tmp_path: Path) -> None:
    manifest = to_manifest(run_record())
    validate_manifest(manifest)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest  # no key added, dropped or reshaped on the way to disk
    assert manifest["budget"] == {"text": "0.5x", "ms": 0.5, "profile": "host-cpu-1t", "stat": "p50",
                                  "factor": 0.5, "teacher_ms": 1.0}
    w050 = next(m for m in manifest["models"] if m["name"] == "w050")
    assert w050["meets_budget"] and w050["budget_margin"] == pytest.approx(0.1)
    assert w050["int8"]["faster_than_fp32"] is False and w050["int8"]["selectable"] is False
    assert manifest["verification"][0]["second_ms"] == 0.46 and manifest["verification"][0]["holds"]
    assert manifest["closest"]["name"] == "w050" and manifest["budget_met"]


def test_no_selection_means_budget_not_met() -> None:
    manifest = to_manifest(run_record(selected=None))
    validate_manifest(manifest)
    assert manifest["selected"] is None and manifest["budget_met"] is False


def test_runtime_versions_name_what_changes_results() -> None:
    versions = runtime_versions()
    assert {"compressor", "python", "torch", "onnx", "onnxruntime", "optuna", "torch_pruning"} <= set(versions)
    assert versions["torch"]


def test_atomic_writes_leave_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"v": 1, "x": float("nan")})
    assert json.loads(target.read_text()) == {"v": 1, "x": None}  # JSON has no NaN
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text())["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind
    write_text(tmp_path / "b.txt", "hello")
    assert sha256_file(tmp_path / "b.txt") == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
