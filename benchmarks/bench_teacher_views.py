"""Distillation time on the same family with two versions of the code, side by side (written for the
teacher's logits kept per augmented view, commit 16286b2, measured and reverted: BENCHMARKS.md
"Pipeline time: the teacher's logits kept per augmented view"; --ref 84a1181, this code at 16286b2).

A finished run folder is copied once per side and round with its distillation and everything after it
removed (`bench_rollback.copy_to_distill`), then resumed: the teacher timing, the search and the checks
before training are reused, so both sides train the same TA and sizes from the same start and seed.
The sides alternate, the order flipping each round, so both see the same machine load. Writes
benchmarks/results/teacher_views.md.

    git worktree add /work/before <commit before the change>
    python benchmarks/bench_teacher_views.py --ref /work/before --runs runs/DEMO runs/ZOO --rounds 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from bench_rollback import copy_to_distill  # noqa: E402

Summary = Callable[[dict, float], dict]


def resume(code: Path, source: Path, out: Path, copy: Callable[[Path, Path], None] = copy_to_distill,
           summary: Summary | None = None) -> dict:
    """`source` copied to `out` by `copy` (which removes what is to be redone), resumed with the package at
    `code`; `summary(manifest, wall seconds)` of the result (by default the distillation's figures)."""
    copy(source, out)
    config = {**json.loads((out / "config.json").read_text()), "out": str(out), "resume": True, "progress": False}
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps(config))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compressor", "--config", str(cfg), "-q"], cwd=code, check=True,
                   capture_output=True)
    return (summary or _distill_summary)(json.loads((out / "manifest.json").read_text()), time.perf_counter() - t0)


def _distill_summary(m: dict, wall: float) -> dict:
    return {"distill_s": m["stages"]["distill"], "wall_s": wall, "epochs": len(m["training"]["history"]),
            "selected": m["selected"], "accuracy": {s["name"]: s["accuracy"] for s in m["models"]}}


def alternate(ref: Path, runs: list[Path], rounds: int, copy: Callable[[Path, Path], None] = copy_to_distill,
              summary: Summary | None = None) -> list[tuple[Path, dict[str, list[dict]]]]:
    """Every run resumed `rounds` times with each code, the sides alternating and the order flipping each
    round, so both see the same machine load."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for run in runs:
            got: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(rounds):
                for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    code = ref if side == "before" else ROOT
                    got[side].append(resume(code, run, Path(d) / f"{run.name}-{side}-{r}", copy, summary))
                    print(run.name, side, r, json.dumps(got[side][-1]), flush=True)
            rows.append((run, got))
    return rows


def describe(code: Path) -> str:
    return subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=code, capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a checkout of the code before the change")
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders to resume")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "teacher_views.md")
    args = ap.parse_args()
    ref, new = describe(args.ref), describe(ROOT)
    rows = alternate(args.ref, args.runs, args.rounds)
    lines = ["# Pipeline time: the teacher's logits kept per augmented view", "",
             f"Command: `python benchmarks/bench_teacher_views.py --ref {args.ref} --runs "
             + " ".join(str(r) for r in args.runs) + f" --rounds {args.rounds}`", "",
             f"*before*: `{ref}`; *after*: `{new}`. Each finished run folder resumed from its distillation "
             "(same TA, sizes, start and seed), the two codes alternated, the order flipped each round.", "",
             "| run | epochs | distill s before | distill s after | after / before | sizes' accuracy |",
             "|---|---:|---|---|---:|---|"]
    for run, got in rows:
        b = [g["distill_s"] for g in got["before"]]
        a = [g["distill_s"] for g in got["after"]]
        same = all(g["accuracy"] == got["before"][0]["accuracy"] for g in got["before"] + got["after"])
        acc = "the same every run" if same else "differ: " + "; ".join(
            f"{k} " + " / ".join(f"{100 * g['accuracy'][k]:.1f}" for g in got["before"] + got["after"])
            for k in got["before"][0]["accuracy"])
        lines.append(f"| {run.name} | {got['before'][0]['epochs']} | {' / '.join(f'{x:.1f}' for x in b)} | "
                     f"{' / '.join(f'{x:.1f}' for x in a)} | {statistics.mean(a) / statistics.mean(b):.2f} | {acc} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
