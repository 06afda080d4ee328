"""Four workers, one study: nothing lost, nothing over-run, no storage error reaches the user.

Four processes start the same search at the same moment (a file barrier releases them
together) on ONE SQLite file, and separately on ONE journal file, each asking for the
same total `n_trials`. The study must end with exactly that many finished trials, none
left RUNNING or failed without a recorded reason, and none failed because of storage;
every worker exits 0 with nothing storage-related in its stderr. Candidates evaluated
more than once (the same architecture scored by two workers) are counted and printed,
not asserted: deduplication is issue 16's.

Run as a script (`python test_concurrency.py worker ...`) this file is the worker.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

WORKERS = 4
N_TRIALS = 12
STORAGE_ERROR = re.compile(r"database is locked|OperationalError|StorageInternalError|sqlalchemy|sqlite3\."
                           r"|DuplicatedStudyError|IntegrityError|JournalFile|lock|damaged or unreadable"
                           r"|Traceback", re.IGNORECASE)


# ---------------------------------------------------------------- the worker (a child process)


def _worker(storage: str, run_dir: str, barrier: str, evaluated: str) -> None:
    import torch
    from torch import nn

    from compressor import prune as P
    from compressor.budget import Budget
    from compressor.intake import load_data
    from compressor.search import SearchConfig, run_search
    from compressor.search import study as study_mod
    from compressor.types import InputSpec, Teacher

    torch.set_num_threads(1)
    data = load_data("digits", seed=0, image_size=8)
    torch.manual_seed(0)  # the same untrained teacher in every worker: the search needs no trained one
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    teacher = Teacher(model, InputSpec((1, 8, 8), 10), "concurrency", "module", "sha-concurrency")

    evaluate = study_mod._Scorer.evaluate

    def recorded(self, arch):  # every candidate this worker actually scored (cache hits are not)
        with open(evaluated, "a") as f:
            f.write(study_mod._arch_key(arch) + "\n")
        return evaluate(self, arch)

    study_mod._Scorer.evaluate = recorded

    def latency(m):  # the hardware predictor's stand-in: 1 ms per 100k MACs
        return P.count_macs(m, torch.zeros(1, 1, 8, 8)) / 1e5

    cfg = SearchConfig(spaces=("cnn",), n_trials=N_TRIALS, batch_size=16, reference_pool=3, population_size=4)
    Path(barrier, f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not Path(barrier, "go").exists():  # released together with the other workers
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)
    res = run_search(teacher, data, latency_fn=latency, budget=Budget(2.0, "2ms", "host-cpu-1t"),
                     teacher_latency_ms=10.0, config=cfg, run_dir=Path(run_dir), storage=storage)
    print(json.dumps({"n_trials": res.n_trials, "n_failed": res.n_failed, "student": res.student.trial_number}))


# ---------------------------------------------------------------- the test


def _run_workers(storage: str, tmp: Path) -> tuple[list[subprocess.CompletedProcess], float]:
    barrier = tmp / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with ExitStack() as files:
        procs = []
        for i in range(WORKERS):
            out = files.enter_context(open(tmp / f"w{i}.out", "w+"))
            err = files.enter_context(open(tmp / f"w{i}.err", "w+"))
            procs.append((subprocess.Popen([sys.executable, __file__, "worker", storage, str(tmp / f"run{i}"),
                                            str(barrier), str(tmp / f"w{i}.evaluated")],
                                           stdout=out, stderr=err, env=env), out, err))
            files.callback(lambda p=procs[-1][0]: p.poll() is None and p.kill())  # never leave one behind
        deadline = time.monotonic() + 90
        while len(list(barrier.glob("ready-*"))) < WORKERS:  # imports done, teacher and data built
            assert time.monotonic() < deadline and all(p.poll() is None for p, *_ in procs), \
                [Path(e.name).read_text()[-2000:] for _, _, e in procs]
            time.sleep(0.01)
        start = time.perf_counter()
        (barrier / "go").touch()
        done = []
        for p, out, err in procs:
            rc = p.wait(timeout=150)
            out.seek(0), err.seek(0)
            done.append(subprocess.CompletedProcess(p.args, rc, out.read(), err.read()))
        return done, time.perf_counter() - start


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_four_workers_share_one_study_without_losing_or_overrunning_trials(kind, tmp_path):
    import optuna
    from optuna.trial import TrialState

    path = tmp_path / ("study.db" if kind == "sqlite" else "study.journal")
    storage = f"sqlite:///{path}" if kind == "sqlite" else str(path)
    workers, wall = _run_workers(storage, tmp_path)

    for i, w in enumerate(workers):
        assert w.returncode == 0, f"worker {i} exited {w.returncode}:\n{w.stderr[-3000:]}"
        assert not STORAGE_ERROR.search(w.stderr), f"worker {i} stderr:\n{w.stderr[-3000:]}"

    store = (optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
             if kind == "journal" else storage)
    trials = optuna.load_study(study_name="student-search", storage=store).trials
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
    lost = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)
            or (t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs)]
    by_storage = [t for t in failed if STORAGE_ERROR.search(t.user_attrs["fail_reason"])]
    archs = [json.dumps(t.user_attrs["arch"], sort_keys=True) for t in complete + failed]
    evaluated = [ln for i in range(WORKERS) if (tmp_path / f"w{i}.evaluated").exists()
                 for ln in (tmp_path / f"w{i}.evaluated").read_text().splitlines()]
    per_worker = [set((tmp_path / f"w{i}.evaluated").read_text().splitlines())
                  if (tmp_path / f"w{i}.evaluated").exists() else set() for i in range(WORKERS)]
    across = sum(1 for a in set(evaluated) if sum(a in s for s in per_worker) > 1)
    figures = {"storage": kind, "workers": WORKERS, "requested": N_TRIALS, "finished": len(complete) + len(failed),
               "complete": len(complete), "failed_with_reason": len(failed), "failed_by_storage": len(by_storage),
               "lost": len(lost), "states": dict(states),
               "duplicate_trials": len(archs) - len(set(archs)),  # finished trials repeating an earlier arch
               "evaluations": len(evaluated), "redundant_evaluations": len(evaluated) - len(set(evaluated)),
               "archs_scored_by_several_workers": across,
               "per_worker_n_trials": [json.loads(w.stdout.strip().splitlines()[-1])["n_trials"] for w in workers],
               "wall_s": round(wall, 1)}
    print(f"\nconcurrency figures: {json.dumps(figures)}")

    assert not by_storage, [t.user_attrs["fail_reason"] for t in by_storage]
    assert not lost, [(t.number, t.state.name, t.user_attrs) for t in lost]
    assert len(complete) + len(failed) == N_TRIALS, figures
    assert all(n == N_TRIALS for n in figures["per_worker_n_trials"]), figures  # every worker reports the study


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:6])
