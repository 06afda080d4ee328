"""What a shorter distillation costs in accuracy: `compress` at several `--epochs`, same seeds.

Distillation is the largest stage of a run (benchmarks/results/pipeline_time.md), and its time is
proportional to the epochs. This runs the whole CLI (`compress --teacher T --budget 0.5x --epochs E
--seed S`) for every (teacher, epochs, seed) and tabulates the validation accuracy of every size,
the selected size, and the distillation's share of the run, so the default can be chosen on
measured accuracy rather than assumed.

Runs are kept under benchmarks/_work/epochs/ and reused when their manifest is there, so the table
can be extended (more seeds, another epoch count) without repeating finished runs. Distillation
times are only comparable between runs made on an equally loaded machine: the table gives them per
epoch, to be read together with the load note.

    .venv/bin/python benchmarks/bench_epochs.py --teachers demo --epochs 4,6,12 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget_claim import make_teacher  # noqa: E402
from bench_pipeline_time import TEACHERS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work" / "epochs"


def run(teacher: Path, epochs: int, seed: int, out: Path) -> dict:
    """One `compress` run (reused when its manifest exists); its figures."""
    manifest = out / "manifest.json"
    if not manifest.exists():
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, "-m", "compressor", "--teacher", str(teacher), "--budget", "0.5x", "--epochs",
               str(epochs), "--seed", str(seed), "--out", str(out), "--no-progress", "-q"]
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if not manifest.exists():
            raise SystemExit(f"{' '.join(cmd)} wrote no manifest")
    m = json.loads(manifest.read_text())
    return {"accuracy": {s["name"]: s["accuracy"] for s in m["models"]}, "selected": m.get("selected"),
            "distill_s": m["stages"].get("distill", 0.0), "total_s": m.get("seconds", 0.0), "epochs": epochs}


def _pct(xs: list[float]) -> str:
    if not xs:
        return "-"
    mean = 100 * statistics.fmean(xs)
    return f"{mean:.1f}" if len(xs) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(xs):.1f}"


def table(name: str, runs: dict[int, list[dict]]) -> list[str]:
    """Per epoch count: each size's accuracy (sizes named by rank: TA first, smallest last, since seeds
    search different families), the selected size's, and the mean of all sizes."""
    lines = [f"### {name}", "",
             "| epochs | TA (largest) | 2nd | smallest | selected | mean of all sizes | paired vs longest "
             "(points) | distill s per epoch |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    longest = max(runs)
    for epochs, rs in sorted(runs.items()):
        ranked = [list(r["accuracy"].values()) for r in rs]  # manifest order: widest first
        sel = [r["accuracy"][r["selected"]] for r in rs if r["selected"]]
        means = [statistics.fmean(a) for a in ranked]
        paired = [100 * (m - statistics.fmean(r["accuracy"].values())) for m, r in zip(means, runs[longest])]
        lines.append(f"| {epochs} | {_pct([a[0] for a in ranked])} | {_pct([a[1] for a in ranked if len(a) > 2])} | "
                     f"{_pct([a[-1] for a in ranked])} | {_pct(sel)} | {_pct(means)} | "
                     f"{statistics.fmean(paired):+.2f} ({', '.join(f'{p:+.1f}' for p in paired)}) | "
                     f"{statistics.fmean(r['distill_s'] / r['epochs'] for r in rs):.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="demo", help="comma list of: " + ", ".join(TEACHERS))
    ap.add_argument("--epochs", default="4,6,12")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=RESULTS / "epochs.md")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    epoch_counts = [int(e) for e in args.epochs.split(",")]
    cmd = "python benchmarks/bench_epochs.py " + " ".join(sys.argv[1:])
    lines = ["## Distillation epochs: accuracy against time", "", f"Command: `{cmd}`", ""]
    if args.note:
        lines += [f"- {args.note}", ""]
    lines += [f"- `compress --teacher T --budget 0.5x --epochs E --seed S`, default settings otherwise; seeds "
              f"{', '.join(map(str, seeds))}. Accuracy is the exported ONNX model's on the validation split "
              "(359 images for digits: one image is 0.28 points). Each seed searches its own student, so sizes "
              "are named by rank; *paired* is each seed's mean over its sizes minus the same seed's at the most "
              "epochs.", ""]
    for name in args.teachers.split(","):
        teacher, _ = make_teacher(TEACHERS[name], TEACHERS[name], epochs=8)
        runs = {e: [run(teacher, e, s, WORK / f"{name}-e{e}-s{s}") for s in seeds] for e in epoch_counts}
        for e, rs in runs.items():
            print(name, e, [(r["selected"], {k: round(v, 3) for k, v in r["accuracy"].items()}) for r in rs],
                  flush=True)
        lines += table(name, runs) + [""]
    lines.append(f"Whole benchmark (runs not reused) {(time.perf_counter() - started) / 60:.1f} min.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
