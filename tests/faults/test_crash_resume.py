"""Crash at every step, then `--resume`: nothing finished is redone, nothing partial is read as complete.

Each case runs the real `compress` program in a child process. The chain kills it from
inside at every crash point in turn (`compressor.faults`: after the teacher, each trial,
each epoch, each INT8 copy and export, the selection, the report, and between the
manifest's write and its rename), resuming after each; other cases kill it from outside
mid-trial, stop it with SIGTERM, kill the latency calibration, or race a second run for
the folder. The resumed run must end with the same sizes and figures as an uninterrupted
run (latencies excepted: they are measured again only where the export was not finished),
and its journal must list no finished unit of work twice.
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


def start(teacher: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compressor", "--teacher", str(teacher), "--out", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


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


# ------------------------------------------------------------------ a kill at every step, in one chain

# Each entry kills the run (SIGKILL, from inside: `compressor.faults`) at that point of the process
# that reaches it; the next entry is set on the `--resume` that follows. Counts are per process, so
# "trial@1" twice is "after the first trial", then "after the second".
CHAIN = [
    "stage@1",              # intake done: folder taken, settings written
    "teacher@1",            # teacher measured and recorded
    "trial@1", "trial@1",   # each search trial
    "epoch@1", "epoch@1",   # each distillation epoch
    "int8@1",               # first size's INT8 copy written, its export not yet recorded
    "export@1",             # first size exported, measured, recorded
    "write:size.json@1",    # second size's record written, not yet renamed into place
    "stage@6",              # the selected size re-measured in a fresh process
    "report@1",             # report done, manifest not yet
    "write:manifest.json@1",  # manifest written, not yet renamed: the run must not look finished
]


def test_a_kill_at_every_step_then_resume_ends_as_an_uninterrupted_run(teacher, reference, tmp_path) -> None:
    from compressor.journal import read_events

    out = tmp_path / "run"
    for n, point in enumerate(CHAIN):
        proc = start(teacher, out, *(["--resume"] if n else []), env={"COMPRESSOR_CRASH_AT": point})
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{point}: the run did not reach it (rc {proc.returncode})\n{err}"
        assert not (out / "manifest.json").exists(), point  # never looks finished before it is
        if point == "write:manifest.json@1":
            assert list(out.glob(".tmp-*manifest.json"))  # the whole file, never renamed into place
    m = resume(teacher, out)
    assert figures(m) == figures(reference)
    assert m["search"]["student"]["arch"] == reference["search"]["student"]["arch"]
    assert [e["val_acc"] for e in m["training"]["history"]] == [e["val_acc"] for e in reference["training"]["history"]]
    assert m["budget"] == reference["budget"]
    best = max(x["accuracy"] for x in m["models"])  # sizes tied on accuracy are told apart by measured latency
    assert m["selected"] in {x["name"] for x in m["models"] if x["accuracy"] == best}
    assert not list(out.rglob(".tmp-*"))  # torn writes cleared, none read

    events = list(read_events(out))
    processes = {e["pid"] for e in events}
    assert len(processes) == len(CHAIN) + 1  # every process left its trace
    for kind in ("teacher", "trial", "epoch", "export"):  # finished work is never done twice
        keys = [e["key"] for e in events if e["kind"] == kind]
        assert len(keys) == len(set(keys)), (kind, keys)
    assert sum(e["kind"] == "teacher" for e in events) == 1
    assert sum(e["kind"] == "trial" for e in events) == reference["search"]["n_trials"]
    assert sum(e["kind"] == "epoch" for e in events) == len(reference["training"]["history"])
    # a size is exported once; the INT8 kill hit before its record, so that one size is exported again
    exported = [e["key"] for e in events if e["kind"] == "export"]
    assert sorted(exported) == sorted(x["name"] for x in reference["models"])
    print(f"[chain] {len(CHAIN)} kills, {len(processes)} processes, exports reused on the last: "
          f"{m['reused']['exports']}")


def test_a_killed_latency_calibration_goes_on_from_its_last_timed_model(teacher, tmp_path) -> None:
    cache = tmp_path / "cache"
    proc = start(teacher, tmp_path / "run", env={"COMPRESSOR_CRASH_AT": "calibration@4",
                                                  "COMPRESSOR_CACHE_DIR": str(cache)})
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    partial = list(cache.rglob("*.partial.json"))
    assert len(partial) == 1 and len(json.loads(partial[0].read_text())["latencies_ms"]) == 4
    proc = start(teacher, tmp_path / "run", "--resume", env={"COMPRESSOR_CACHE_DIR": str(cache),
                                                             "COMPRESSOR_CRASH_AT": "stage@2"})
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL  # killed right after the calibration finished
    (fitted,) = [p for p in cache.rglob("*.json") if not p.name.endswith(".partial.json")]
    info = json.loads(fitted.read_text())["info"]
    assert info["resumed_from_model"] == 4 and info["n_models"] == 6
    assert not list(cache.rglob("*.partial.json"))


def test_a_second_run_on_a_folder_in_use_is_refused_and_changes_nothing(teacher, tmp_path) -> None:
    out = tmp_path / "run"
    first = start(teacher, out)
    try:
        deadline = time.monotonic() + 300
        while not (out / "config.json").is_file():  # the first run holds the folder from here on
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = start(teacher, out, "--resume")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "in use by another compress run" in lines[0], err
    finally:
        first.kill()
        first.wait()
