"""Early stopping on a plateau: the same run with and without it, side by side, on zoo teachers.

For each (teacher, fraction) named: `compress` with default settings (early stop on), then the
same run with `early_stop=False` (every planned epoch, as before the rule) at the budget in
milliseconds the first run resolved, so both judge against the same figure. Teachers are those of
`bench_zoo.py` (timm/torchvision networks trained here on digits 32x32, validation images never
seen by the teacher; trained once and cached in its work folder). The rule applies only where the
search picks a family from random weights (48 planned epochs); a row whose family was cut from the
teacher (12 epochs) is reported as such.

Reported per pair: the epochs each run trained, distillation seconds, the selected size and its
accuracy, and every size's accuracy where both runs planned the same sizes. Pairs already run are read back from their
manifests under benchmarks/_work/early_stop/ (`--fresh` runs them again).

    python benchmarks/bench_early_stop.py --rows 'torchvision:squeezenet1_1@0.25,torchvision:mnasnet0_5@0.25'
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_zoo import PROFILE, dataset, slug, train_teacher  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "early_stop"
RESULTS = ROOT / "benchmarks" / "results"


def run(ts: Path, data: Path, budget: str, early_stop: bool, out: Path, seed: int) -> dict[str, Any]:
    import compressor

    if out.exists():
        shutil.rmtree(out)
    result = compressor.compress(teacher=str(ts), data=str(data), budget=budget, out=str(out), profile=PROFILE,
                                 seed=seed, progress=False, early_stop=early_stop)
    return summary(result.manifest)


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """What the table needs from one run's manifest."""
    training, search = m.get("training") or {}, m.get("search") or {}
    return {"selected": m.get("selected"), "budget_ms": float(m["budget"]["ms"]),
            # the family trained: the search's student and its TA (two runs may plan differently on timing noise)
            "family": json.dumps([(search.get("student") or {}).get("arch"), (search.get("ta") or {}).get("arch")],
                                 sort_keys=True),
            "acc": {s["name"]: float(s["accuracy"]) for s in m["models"]},
            "epochs_planned": training.get("epochs"), "epochs_run": len(training.get("history") or []),
            "stopped_early": training.get("stopped_early"), "epochs_why": training.get("epochs_why"),
            "distill_s": (m.get("stages") or {}).get("distill"), "compress_s": m.get("seconds")}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report(rows: list[dict[str, Any]], command: str, wall: float) -> str:
    lines = ["## Early stopping on a plateau: zoo teachers, with and without it", "",
             f"`{command}`", "",
             "Each row: `compress` with default settings (early stop on), then the same run with "
             "`--no-early-stop` (every planned epoch, as before the rule) at the budget in milliseconds the "
             "first resolved; seed as listed; zoo teachers trained here on digits 32x32 (held-out validation "
             "images, 360 of them: one image is 0.28 points). The rule acts only on a family from random "
             "weights (48 planned epochs).", "",
             "| teacher | budget | seed | family | epochs: on / off | distill s: on / off | ratio | "
             "selected: on | acc % | selected: off | acc % | Δ selected | sizes (on − off, points) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        on, off = r["on"], r["off"]
        same = set(on["acc"]) == set(off["acc"])
        deltas = " ".join(f"{n} {100 * (on['acc'][n] - off['acc'][n]):+.1f}" for n in sorted(on["acc"])) \
            if same else "sizes differ"
        sel_on = on["acc"].get(on["selected"]) if on["selected"] else None
        sel_off = off["acc"].get(off["selected"]) if off["selected"] else None
        d = "-" if sel_on is None or sel_off is None else f"{100 * (sel_on - sel_off):+.1f}"
        ratio = on["distill_s"] / off["distill_s"] if on.get("distill_s") and off.get("distill_s") else None
        family = "random weights" if "random weights" in str(on["epochs_why"]) else "cut from teacher"
        if on["family"] != off["family"]:
            family += ", planned differently"
        lines.append(f"| {r['teacher']} | {r['fraction']:g}x ({on['budget_ms']:.3f} ms) | {r['seed']} | {family} | "
                     f"{on['epochs_run']} / {off['epochs_run']} | {on['distill_s']:.0f} / {off['distill_s']:.0f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {on['selected'] or 'none'} | {pct(sel_on)} | "
                     f"{off['selected'] or 'none'} | {pct(sel_off)} | {d} | {deltas} |")
    same = [r for r in rows if "random weights" in str(r["on"]["epochs_why"]) and r["on"]["family"] == r["off"]["family"]]
    if same:
        on_s = sum(r["on"]["distill_s"] for r in same)
        off_s = sum(r["off"]["distill_s"] for r in same)
        deltas = [100 * (r["on"]["acc"][r["on"]["selected"]] - r["off"]["acc"][r["off"]["selected"]]) for r in same
                  if r["on"]["selected"] and r["off"]["selected"]]
        lines += ["", f"Rows where both runs trained the same family from random weights: {len(same)}, "
                      f"{sum(r['on']['stopped_early'] is not None for r in same)} stopped early; distillation "
                      f"{off_s:.0f} -> {on_s:.0f} s ({on_s / off_s:.2f}x); selected accuracy on − off "
                      f"{', '.join(f'{d:+.1f}' for d in deltas)} points (mean {sum(deltas) / max(1, len(deltas)):+.2f})."]
    lines += ["", f"torch {torch.__version__}, {platform.machine()}, 2 cores; {wall / 60:.0f} min in all.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", required=True, help="comma list of TEACHER@FRACTION (bench_zoo teacher names)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "early_stop.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the table from the runs already on disk")
    ap.add_argument("--fresh", action="store_true", help="run pairs again that are already on disk")
    args = ap.parse_args()
    command = " ".join(["python benchmarks/bench_early_stop.py", *(shlex.quote(a) for a in sys.argv[1:])])
    t0 = time.perf_counter()
    data = dataset()
    rows = []
    for item in args.rows.split(","):
        name, _, frac = item.strip().rpartition("@")
        for seed in (int(s) for s in args.seeds.split(",")):
            base = WORK / f"{slug(name)}-{float(frac):g}x-s{seed}"
            if args.report_only or ((base / "off" / "manifest.json").exists() and not args.fresh):
                if not (base / "off" / "manifest.json").exists():
                    continue
                on, off = (summary(json.loads((base / v / "manifest.json").read_text())) for v in ("on", "off"))
            else:
                ts, _info = train_teacher(name, data, args.teacher_epochs)
                on = run(ts, data, f"{float(frac):g}x", True, base / "on", seed)
                off = run(ts, data, f"{on['budget_ms']:.6f}ms", False, base / "off", seed)
            row = {"teacher": name, "fraction": float(frac), "seed": seed, "on": on, "off": off}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("teacher", "fraction", "seed")}),
                  {k: (v["epochs_run"], round(v["distill_s"] or 0), v["selected"], v["acc"].get(v["selected"]))
                   for k, v in (("on", on), ("off", off))}, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(report(rows, command, time.perf_counter() - t0))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
