"""Crash at a stage, then `--resume`: nothing finished is redone, nothing partial is read as complete.

Each case runs the real `compress` program in a child process, watches the run folder,
and kills the child (SIGKILL, or SIGTERM for a clean stop) as soon as a stage has left
its mark: a finished search trial, an epoch checkpoint, an exported size. The resumed
run must end with the same sizes and figures as an uninterrupted run (latencies
excepted: they are measured again only where the export was not finished).
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from compressor.manifest import read_manifest

pytestmark = pytest.mark.slow

ARGS = ["--budget", "10s", "--trials", "2", "--sizes", "1,0.5", "--epochs", "2", "--image-size", "8",
        "--calibration-models", "6", "--no-progress", "--int8"]


def start(teacher: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compressor", "--teacher", str(teacher), "--out", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})


def run_until(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float = 300) -> bool:
    """Send `sig` once `ready()` holds; False when the run finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(sig)
            proc.wait(timeout=120)
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the run neither reached the kill point nor finished")


def finished_trials(run: Path) -> int:
    db = run / "search" / "search.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # the schema is still being created
        return 0


def figures(manifest: dict) -> dict:
    """What must not change between an uninterrupted and a resumed run."""
    return {m["name"]: {"ratio": m["ratio"], "params": m["params"], "accuracy": m["accuracy"],
                        "int8": m["int8"]["accuracy"], "arch": m.get("arch")} for m in manifest["models"]}


@pytest.fixture(scope="module")
def teacher(tiny_teacher_files) -> Path:
    return tiny_teacher_files["export"]


@pytest.fixture(scope="module")
def reference(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start(teacher, out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return read_manifest(out)


def resume(teacher: Path, out: Path) -> dict:
    proc = start(teacher, out, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return read_manifest(out)


def test_killed_during_distillation_resumes_from_its_last_epoch(teacher, reference, tmp_path) -> None:
    out = tmp_path / "run"
    checkpoint = out / "family" / "checkpoint.pt"
    assert run_until(start(teacher, out), checkpoint.is_file, signal.SIGKILL)
    assert not (out / "manifest.json").exists()  # an unfinished run never looks finished
    epochs_done = len(json.loads(json.dumps(_epochs(checkpoint))))
    m = resume(teacher, out)
    assert figures(m) == figures(reference)
    assert m["search"]["n_trials"] == reference["search"]["n_trials"]  # no trial was run again
    assert len(m["training"]["history"]) == len(reference["training"]["history"]) and epochs_done >= 1


def test_killed_during_export_keeps_the_sizes_already_exported(teacher, reference, tmp_path) -> None:
    out = tmp_path / "run"
    first = out / "models" / reference["models"][0]["name"] / "size.json"
    assert run_until(start(teacher, out), first.is_file, signal.SIGKILL)
    kept = {p.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/size.json")}
    m = resume(teacher, out)
    assert figures(m) == figures(reference)
    for name, mtime in kept.items():  # an exported, measured size is reused, not exported again
        assert m["reused"]["exports"].count(name) == 1, (name, m["reused"])
    for size in m["models"]:  # and every file is the file the manifest describes
        from compressor.files import sha256_file

        assert all(sha256_file(out / path) == size["sha256"][role] for role, path in size["files"].items()
                   if role in size["sha256"])


def test_sigterm_is_a_clean_stop_with_exit_130_and_a_resumable_folder(teacher, reference, tmp_path) -> None:
    out = tmp_path / "run"
    proc = start(teacher, out)
    assert run_until(proc, (out / "family" / "checkpoint.pt").is_file, signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err.strip().splitlines()[-1]
    assert figures(resume(teacher, out)) == figures(reference)


def test_killed_during_the_search_keeps_every_finished_trial(teacher, reference, tmp_path) -> None:
    out = tmp_path / "run"
    assert run_until(start(teacher, out), lambda: finished_trials(out) >= 1, signal.SIGKILL)
    before = finished_trials(out)
    m = resume(teacher, out)
    assert finished_trials(out) == m["search"]["n_trials"] - m["search"]["n_failed"] >= before
    assert m["search"]["n_trials"] == reference["search"]["n_trials"]  # the interrupted trial is not counted
    assert [x["name"] for x in m["models"]] and m["selected"]


def _epochs(checkpoint: Path) -> list:
    import torch

    return torch.load(checkpoint, weights_only=True).get("history", [])
