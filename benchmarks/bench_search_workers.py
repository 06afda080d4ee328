"""Search workers on one PostgreSQL study: 1, 2 and 4 processes, the same trial count.

For each worker count a driving `compress` run (one process) and N-1 `compress search-worker`
processes share a fresh study on a real PostgreSQL server started here on loopback. Figures per
count: the search's wall time (first trial started to last finished, read from the study), trials
finished and lost, duplicate candidates, trials per process, and whether the driver's Pareto
front (in its manifest) is the front of all the study's trials.

    .venv/bin/python benchmarks/bench_search_workers.py      # writes benchmarks/results/search_workers.md
    .venv/bin/python benchmarks/bench_search_workers.py --storage journal   # ... search_workers_journal.md

Needs the machine's PostgreSQL binaries (initdb, postgres) and the `postgres` extra; `--storage
journal` needs neither: the study is an Optuna journal file, as on a shared disk without a server.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import postgres_server, unavailable_reason  # noqa: E402
from tiny_models import TinyResidual  # noqa: E402

from compressor.intake.data import load_data  # noqa: E402
from compressor.search.study import _pareto, open_storage  # noqa: E402


def _teacher(folder: Path) -> Path:
    """A small residual CNN trained for a few seconds on digits (32x32), saved as TorchScript."""
    torch.manual_seed(0)
    data = load_data("digits", seed=0, image_size=32)
    model = TinyResidual()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(data.x_train), (64,))
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = folder / "teacher.pt"
    torch.jit.save(torch.jit.trace(model.eval(), data.x_val[:4]), path)
    return path


def _compress(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compressor", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _db_counters(url: str) -> tuple[int, int]:
    """(transactions, rows written) the server has counted for the database so far (a journal
    file has no server: its size in bytes stands in for rows, transactions are not counted)."""
    if not url.startswith("postgresql"):
        path = Path(url)
        return 0, path.stat().st_size if path.exists() else 0
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted "
                           "FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]), int(row[1])


def _one(url: str, teacher: Path, workers: int, trials: int, folder: Path, env: dict[str, str]) -> dict:
    study = f"bench-{workers}"
    if not url.startswith("postgresql"):  # one journal file per count, like one study per count
        url = str(folder / f"{study}.journal")
    xacts0, rows0 = _db_counters(url)
    helpers = [_compress("search-worker", "--storage", url, "--study", study, "--no-progress", env=env)
               for _ in range(workers - 1)]
    started = time.monotonic()
    driver = _compress("--teacher", str(teacher), "--budget", "0.5x", "--storage", url, "--study", study,
                       "--trials", str(trials), "--epochs", "1", "--out", str(folder / study), "--no-progress",
                       env=env)
    _, err = driver.communicate()
    wall = time.monotonic() - started
    if driver.returncode not in (0, 3):
        raise SystemExit(f"driver failed ({driver.returncode}): {err[-2000:]}")
    for h in helpers:
        h.communicate()
    time.sleep(2)  # every backend has exited and flushed its statistics
    xacts1, rows1 = _db_counters(url)
    store, _ = open_storage(url, folder)
    trials_ = optuna.load_study(study_name=study, storage=store).get_trials()
    finished = [t for t in trials_ if t.state == TrialState.COMPLETE
                or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)]
    scored = [t for t in trials_ if t.state == TrialState.COMPLETE]
    keys = Counter(json.dumps(t.user_attrs["arch"], sort_keys=True) for t in scored)
    starts = [t.datetime_start for t in finished if t.datetime_start]
    ends = [t.datetime_complete for t in finished if t.datetime_complete]
    manifest = json.loads((folder / study / "manifest.json").read_text())
    front = {json.dumps(c["arch"], sort_keys=True) for c in manifest["search"]["pareto"]}
    return {
        "workers": workers, "trials": trials, "finished": len(finished),
        "lost": trials - len(finished), "duplicates": sum(n - 1 for n in keys.values()),
        "per_process": sorted(Counter(t.user_attrs.get("worker") for t in finished).values(), reverse=True),
        "search_s": (max(ends) - min(starts)).total_seconds(), "run_s": wall,
        "front_size": len(front), "front_from_all": front == _front(scored, manifest["budget"]["ms"]),
        "xacts_per_trial": (xacts1 - xacts0) / max(1, len(trials_)), "rows_per_trial": (rows1 - rows0) / max(1, len(trials_)),
        "trials_per_s": len(finished) / max(1e-9, (max(ends) - min(starts)).total_seconds()),
    }


def _front(scored: list, budget_ms: float) -> set[str]:
    """The in-budget trials' (proxy up, latency down) non-dominated set, recomputed from the study."""
    feasible = [t for t in scored if t.user_attrs["latency_ms"] <= budget_ms] or scored
    return {json.dumps(t.user_attrs["arch"], sort_keys=True) for t in _pareto(feasible)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--storage", choices=["postgresql", "journal"], default="postgresql")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    journal = args.storage == "journal"
    out = args.out or str(ROOT / "benchmarks" / "results" /
                          ("search_workers_journal.md" if journal else "search_workers.md"))
    if not journal and (reason := unavailable_reason()):
        raise SystemExit(f"cannot run: {reason}")
    counts = [int(n) for n in args.workers.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, (nullcontext("journal") if journal else postgres_server()) as url:
        teacher = _teacher(Path(tmp))
        for n in counts:
            rows.append(_one(url, teacher, n, args.trials, Path(tmp), env))
            print(rows[-1], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    where = ("one Optuna journal file (the shared-disk storage: no server, no heartbeat)" if journal
             else "one study in a real PostgreSQL server (loopback)")
    command = "python benchmarks/bench_search_workers.py" + (" --storage journal" if journal else "")
    db_cols = ("| journal bytes per trial " if journal else "| DB transactions per trial | rows written per trial ")
    lines = [
        f"# Search workers on {'one journal file' if journal else 'one PostgreSQL study'}", "",
        f"A driving `compress` run and N-1 `compress search-worker` processes on {where}, "
        f"{args.trials} trials, the demo's search spaces, a small residual "
        "CNN teacher on digits 32x32, `--budget 0.5x`, 1 thread per process.", "",
        "```bash", command, "```", "",
        f"Machine: {cpu}, {os.cpu_count()} cores (shared); Python {platform.python_version()}, "
        f"Optuna {optuna.__version__}.", "",
        "| processes | trials | finished | lost | duplicate candidates | trials per process | search wall s "
        f"| trials/s {db_cols}| whole run s | driver's front = front of all trials |",
        "|---|---|---|---|---|---|---|---|" + ("" if journal else "---|") + "---|---|---|",
    ]
    for r in rows:
        db = (f"{r['rows_per_trial']:.0f}" if journal
              else f"{r['xacts_per_trial']:.0f} | {r['rows_per_trial']:.0f}")
        lines.append(f"| {r['workers']} | {r['trials']} | {r['finished']} | {r['lost']} | {r['duplicates']} | "
                     f"{', '.join(map(str, r['per_process']))} | {r['search_s']:.1f} | {r['trials_per_s']:.2f} | "
                     f"{db} | {r['run_s']:.1f} | "
                     f"{'yes' if r['front_from_all'] else 'NO'} ({r['front_size']} candidates) |")
    if not journal:
        lines += ["", "*DB transactions / rows written per trial*: the server's own counters "
                  "(`pg_stat_database`) over the whole run, divided by the trials the study holds (pruned "
                  "redraws included), so they include the driver's reads and heartbeats."]
    else:
        lines += ["", "*journal bytes per trial*: the journal file's size at the end over the trials it "
                  "holds (every write is an appended, file-locked log line). A journal has no heartbeat: a "
                  "worker killed mid-trial leaves its trial RUNNING until the grace period passes, then "
                  "another worker takes its place."]
    lines += ["", "*search wall s*: first trial started to last trial finished, from the study's own "
              "timestamps. *whole run s*: the driver from start to exit (intake, search, one epoch of "
              "distillation, export, report). On 2 cores, more than 2 processes only share the same cores: "
              "the figures show trials are neither lost nor repeated, not a speed-up past the core count."]
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
