"""Where a `compress` run spends its time, stage by stage, and what a faster version changes.

Runs the whole CLI (`python -m compressor --teacher T --budget 0.5x --int8`) on three teachers of
different kinds, each trained here on digits 32x32 and saved as TorchScript:

* ``demo``: the example teacher (`compress example-teacher`, residual CNN, 480k parameters);
* ``resconcat``: residual blocks joined by concatenation (DenseNet-like growth, 199k parameters);
* ``mobilenet``: depthwise-separable CNN (MobileNet-v1 style, 205k parameters).

Each run reads its stage table from the manifest (`stages`: wall seconds per stage) and the
validation accuracy of every size. With ``--ref DIR`` (a checkout of an earlier commit, e.g. made
with `git worktree add`), every run is made with both code versions, one after the other, so the
two are timed side by side on the same machine in the same hour and compared as ratios. Every run
starts with an empty latency-calibration cache (`COMPRESSOR_CACHE_DIR`), as on a fresh machine, so
the first-run calibration is in the table; the table also shows the total without it.

    .venv/bin/python benchmarks/bench_pipeline_time.py --ref /path/to/old/checkout --seeds 0,1,2
    .venv/bin/python benchmarks/bench_pipeline_time.py --teachers demo --seeds 0 --out /tmp/t.md  # one run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget_claim import make_teacher  # noqa: E402  (teachers trained once, reused from its work folder)

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work" / "pipeline_time"
TEACHERS = {"demo": "example", "resconcat": "resconcat", "mobilenet": "mobilenet"}
STAGES = ["intake", "calibration", "teacher", "anchor", "students", "search", "premeasure", "distill", "export", "select", "tensorrt", "seal", "report"]


def run_once(code: Path, teacher: Path, seed: int, out: Path, budget: str, extra: list[str]) -> dict:
    """One `compress` run with the package at `code`; its manifest figures and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(code), "COMPRESSOR_CACHE_DIR": str(out.parent / f"cache-{out.name}")}
    cmd = [sys.executable, "-m", "compressor", "--teacher", str(teacher), "--budget", budget, "--int8",
           "--seed", str(seed), "--out", str(out), "--no-progress", "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise SystemExit(f"{' '.join(cmd)} wrote no manifest (exit {proc.returncode}): {proc.stderr[-2000:]}")
    m = json.loads(manifest_path.read_text())
    stages = dict(m.get("stages", {}))
    if "students" not in stages and "distill" in stages:
        # newer manifests time search and distillation apart; their sum is the older `students` stage
        stages["students"] = stages["distill"] + stages.get("search", 0.0)
    epochs = len(m.get("training", {}).get("history", []))
    # manifests from before the stage clock have no `seconds`: their process wall stands in for it
    return {"exit": proc.returncode, "wall_s": wall, "seconds": m.get("seconds") or wall, "stages": stages,
            "accuracy": {s["name"]: s["accuracy"] for s in m["models"]},
            "latency_ms": {s["name"]: next(iter(s["latency"].values())).get("p50_ms") for s in m["models"]},
            "selected": m.get("selected"), "budget_met": m.get("budget_met"), "budget_ms": m["budget"]["ms"],
            "teacher_accuracy": m["teacher"].get("accuracy"), "epochs": epochs,
            "trials": m.get("search", {}).get("n_trials")}


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _pm(xs: list[float], scale: float = 1.0) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0] * scale:.1f}"
    return f"{statistics.fmean(xs) * scale:.1f} ± {statistics.stdev(xs) * scale:.1f}"


def stage_table(runs: dict[str, list[dict]]) -> list[str]:
    """Mean seconds per stage for each code version, and after/before where both ran."""
    versions = list(runs)
    head = "| stage | " + " | ".join(f"{v} s" for v in versions) + (" | after / before |" if len(versions) == 2 else " |")
    lines = [head, "|---|" + "---:|" * (len(versions) + (1 if len(versions) == 2 else 0))]
    rows = [s for s in STAGES if any(s in r["stages"] for v in versions for r in runs[v])]
    totals = {v: [r["seconds"] for r in runs[v]] for v in versions}
    no_calib = {v: [r["seconds"] - r["stages"].get("calibration", 0.0) for r in runs[v]] for v in versions}
    walls = {v: [r["wall_s"] for r in runs[v]] for v in versions}
    for label, values in [*[(s, {v: [r["stages"].get(s, 0.0) for r in runs[v]] for v in versions}) for s in rows],
                          ("**compress (manifest)**", totals), ("compress without calibration", no_calib),
                          ("process wall (imports included)", walls)]:
        means = [_mean(values[v]) for v in versions]
        ratio = ""
        if len(versions) == 2:
            ratio = f" {means[1] / means[0]:.2f} |" if means[0] > 0.05 else " - |"
        lines.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |" + ratio)
    return lines


def accuracy_table(runs: dict[str, list[dict]]) -> list[str]:
    versions = list(runs)
    # every size any run made: the versions (and seeds) may nest different sizes
    sizes = sorted(dict.fromkeys(size for v in versions for r in runs[v] for size in r["accuracy"]),
                   key=lambda n: -int(n[1:]) if n[1:].isdigit() else 0)
    lines = ["| size | " + " | ".join(f"{v} acc % (mean ± sd)" for v in versions) + " |",
             "|---|" + "---:|" * len(versions)]
    for size in sizes:
        cells = [_pm([r["accuracy"][size] for r in runs[v] if size in r["accuracy"]], 100) for v in versions]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    sel = [_pm([r["accuracy"].get(r["selected"], float("nan")) for r in runs[v] if r["selected"]], 100)
           for v in versions]
    lines.append("| **selected** | " + " | ".join(sel) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", type=Path, help="checkout of the code to compare against (runs first, as 'before')")
    ap.add_argument("--teachers", default=",".join(TEACHERS), help="comma list of: " + ", ".join(TEACHERS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--budget", default="0.5x")
    ap.add_argument("--extra", default="", help="more compress flags, space separated, for both versions")
    ap.add_argument("--extra-after", default="",
                    help="compress flags for the 'after' side only: with --ref pointing at a checkout of the same "
                         "code, this compares two settings side by side (e.g. --extra-after '--schedule chain')")
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline_time.md")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    versions = {"before": args.ref.resolve(), "after": ROOT} if args.ref else {"this": ROOT}
    extra = args.extra.split()
    all_runs: dict[str, dict[str, list[dict]]] = {}
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    for name in args.teachers.split(","):
        teacher, info = make_teacher(TEACHERS[name], TEACHERS[name], epochs=8)
        runs: dict[str, list[dict]] = {v: [] for v in versions}
        for seed in seeds:
            for v, code in versions.items():  # side by side: each seed with both versions before the next
                with tempfile.TemporaryDirectory(dir=WORK) as tmp:
                    more = args.extra_after.split() if v == "after" else []
                    r = run_once(code, teacher, seed, Path(tmp) / "run", args.budget, extra + more)
                r["teacher_info"] = info
                runs[v].append(r)
                print(f"{name} seed {seed} {v}: {r['seconds']:.1f} s, exit {r['exit']}, selected {r['selected']} "
                      f"({r['accuracy'].get(r['selected'])}), stages {r['stages']}", flush=True)
        all_runs[name] = runs
    (WORK / "runs.json").write_text(json.dumps(all_runs, indent=1))
    write(all_runs, args, seeds, versions, time.perf_counter() - started)


def write(all_runs: dict, args: argparse.Namespace, seeds: list[int], versions: dict[str, Path], wall: float) -> None:
    import torch

    cmd = "python benchmarks/bench_pipeline_time.py " + " ".join(
        a if " " not in a else repr(a) for a in sys.argv[1:])
    lines = ["## Pipeline time, stage by stage", "", f"Command: `{cmd}`", ""]
    if args.note:
        lines += [f"- {args.note}", ""]
    lines += [f"- `compress --teacher T --budget {args.budget} --int8 --seed S` with default settings "
              f"{args.extra or ''}on profile host-cpu-1t; seeds {', '.join(map(str, seeds))}; every run with an "
              "empty latency-calibration cache (a fresh machine's first run).",
              f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"Python {platform.python_version()}; whole benchmark {wall / 60:.1f} min.",
              ]
    if len(versions) == 2:
        lines.append(f"- *before*: the code at `{_describe(versions['before'])}`; *after*: `{_describe(ROOT)}`"
                     + (f", with `{args.extra_after}`" if args.extra_after else "")
                     + ". Each seed ran with both versions back to back, so both saw the same machine load.")
    for name, runs in all_runs.items():
        first = next(iter(runs.values()))[0]
        info = first["teacher_info"]
        lines += ["", f"### {name}: {info.get('params', 0):,} parameters, teacher accuracy "
                      f"{100 * (first['teacher_accuracy'] or 0):.1f} %", ""]
        lines += stage_table(runs)
        lines += [""] + accuracy_table(runs)
        lines += [""] + [f"- {v}: epochs {sorted({r['epochs'] for r in rs})}, selected "
                         f"{[r['selected'] for r in rs]}, budget met {[r['budget_met'] for r in rs]}, "
                         f"exit {[r['exit'] for r in rs]}" for v, rs in runs.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _describe(code: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return str(code)


if __name__ == "__main__":
    main()
