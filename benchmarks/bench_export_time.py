"""The export stage (ONNX, parity, INT8, every latency measurement) and the selection after it, on the
same trained family with two versions of the code, side by side.

A finished run folder is copied once per side and round with its export and everything after it removed
(`bench_rollback.copy_to_export`), then resumed: the search and the trained family are reused, so both
sides export and time the very same sizes. The sides alternate, the order flipping each round
(`bench_teacher_views.alternate`). Per run: the export and select stage seconds, how many latency series
were timed a second time because they looked noisy, and the sizes' accuracy and p50 on the budget's profile.

    git worktree add /work/before <commit before the change>
    python benchmarks/bench_export_time.py --ref /work/before --runs runs/DEMO runs/OTHER --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from bench_rollback import copy_to_export  # noqa: E402
from bench_teacher_views import alternate, describe  # noqa: E402


def _series(m: dict) -> list[dict]:
    """Every latency report the run measured: the teacher's is reused on resume and left out."""
    out = []
    for size in m["models"]:
        out += [r for r in size["latency"].values() if r.get("measured")]
        int8 = size.get("int8") or {}
        out += [r for r in (int8.get("latency") or {}).values() if r.get("measured")]
    out += [c["second"] for c in m.get("verification") or [] if isinstance(c.get("second"), dict)]
    return out


def summary(m: dict, wall: float) -> dict:
    series = _series(m)
    profile = m["budget"]["profile"]
    return {"export_s": m["stages"]["export"], "select_s": m["stages"]["select"], "wall_s": wall,
            "series": len(series), "remeasured": sum(bool(r.get("env", {}).get("remeasured")) for r in series),
            "timed_s": sum(r.get("env", {}).get("timed_s", 0.0) + r.get("env", {}).get("warmup_s", 0.0) for r in series),
            "selected": m["selected"], "accuracy": {s["name"]: s["accuracy"] for s in m["models"]},
            "p50": {s["name"]: s["latency"][profile]["p50_ms"] for s in m["models"]}}


def _mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a checkout of the code before the change")
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders to resume")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--title", default="Pipeline time: the export stage, side by side")
    ap.add_argument("--out", type=Path, default=RESULTS / "export_time.md")
    args = ap.parse_args()
    ref, new = describe(args.ref), describe(ROOT)
    rows = alternate(args.ref, args.runs, args.rounds, copy_to_export, summary)
    lines = [f"## {args.title}", "",
             f"Command: `python benchmarks/bench_export_time.py --ref {args.ref} --runs "
             + " ".join(str(r) for r in args.runs) + f" --rounds {args.rounds}`", "",
             f"*before*: `{ref}`; *after*: `{new}`. Each finished run folder resumed from its export (the same "
             "trained sizes), the two codes alternated, the order flipped each round. *timed s*: the warm-up "
             "and timed phases of every latency series the stage measured (teacher excluded: reused); "
             "*re-measured*: series timed a second time because they looked noisy.", "",
             "| run | side | export s (each round) | select s | series | re-measured | timed s | selected |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for run, got in rows:
        for side in ("before", "after"):
            g = got[side]
            each = " / ".join(f"{x['export_s']:.1f}" for x in g)
            lines.append(f"| {run.name} | {side} | {each} | "
                         f"{_mean([x['select_s'] for x in g]):.1f} | {_mean([x['series'] for x in g]):.1f} | "
                         f"{_mean([x['remeasured'] for x in g]):.1f} | {_mean([x['timed_s'] for x in g]):.1f} | "
                         f"{', '.join(sorted({str(x['selected']) for x in g}))} |")
        b, a = (_mean([x["export_s"] for x in got[s]]) for s in ("before", "after"))
        same = all(x["accuracy"] == got["before"][0]["accuracy"] for x in got["before"] + got["after"])
        lines.append(f"| {run.name} | after / before | {a / b:.2f} | | | | | sizes' accuracy "
                     f"{'the same every run' if same else 'differs'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
