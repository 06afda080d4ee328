"""Distillation of families cut from the teacher: the code at `--ref` against this checkout, on the same
families.

For each row (a teacher and a budget) and seed, `compress` runs to the end with the code at `--ref`
(`e12/`: a cut family then trained 12 epochs); a copy of that run with its distillation and everything
after it removed (`bench_rollback.copy_to_distill`) is then resumed with this checkout's defaults
(`new/`), so both train the same TA and sizes from the same start with the same seed. Where a folder
`e24/` exists beside them (the same copy resumed with `--epochs 24` under the `--ref` code: planned for 24,
ending early on a plateau only), its figures are shown too. Finished runs are read back, not run again.

    git worktree add /work/before <commit before the change>
    python benchmarks/bench_cut_epochs.py --ref /work/before --rows 'torchvision:resnet18@0.5x,demo@0.5x' --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"

from bench_rollback import _compress, copy_to_distill, teacher_and_data  # noqa: E402


def folder_of(work: Path, row: str, seed: int) -> Path:
    return work / f"{row.replace(':', '-').replace('@', '-').replace(' ', '_')}-s{seed}"


def run_row(ref: Path, work: Path, row: str, seed: int) -> Path:
    name, budget = row.rsplit("@", 1)
    folder = folder_of(work, row, seed)
    folder.mkdir(parents=True, exist_ok=True)
    before, after = folder / "e12", folder / "new"
    if not (before / "manifest.json").exists():
        teacher, data = teacher_and_data(name)
        _compress(ref, ["--teacher", str(teacher), *data, "--budget", budget, "--seed", str(seed),
                        "--out", str(before)], folder / "e12.log")
    if not (after / "manifest.json").exists():
        copy_to_distill(before, after)
        config = {**json.loads((after / "config.json").read_text()), "out": str(after), "resume": True,
                  "progress": False}
        (folder / "new.json").write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with (folder / "new.log").open("w") as f:
            subprocess.run([sys.executable, "-m", "compressor", "--config", str(folder / "new.json")], cwd=ROOT,
                           env=env, stdout=f, stderr=subprocess.STDOUT)
    return folder


def figures(run: Path) -> dict | None:
    path = run / "manifest.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    t = m.get("training") or {}
    stop = t.get("stopped_early") or {}
    acc = {s["name"]: s["accuracy"] for s in m["models"]}
    return {"teacher": m["teacher"]["accuracy"], "acc": acc, "selected": m.get("selected"),
            "epochs": stop.get("epochs_run", t.get("epochs")), "planned": t.get("epochs"),
            "distill_s": m["stages"]["distill"], "mean": statistics.mean(acc.values())}


def _cell(f: dict | None) -> str:
    if f is None:
        return "- | - | - | -"
    sel = f"{f['selected']} {100 * f['acc'][f['selected']]:.1f}" if f["selected"] else "none"
    return f"{f['epochs']}/{f['planned']} | {100 * f['mean']:.2f} | {sel} | {f['distill_s']:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a checkout of the code before the change")
    ap.add_argument("--rows", required=True, help="comma list of TEACHER@BUDGET (demo or a bench_zoo teacher)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "cut_epochs")
    ap.add_argument("--out", type=Path, default=RESULTS / "cut_epochs.md")
    ap.add_argument("--note", default="")
    ap.add_argument("--title", default="Distillation: the same families with two versions of the code")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ref = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=args.ref, capture_output=True, text=True).stdout.strip()
    new = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"## {args.title}", "",
             f"Command: `python benchmarks/bench_cut_epochs.py --ref {args.ref} --rows '{args.rows}' --seeds {args.seeds}`",
             "", *([args.note, ""] if args.note else []),
             f"*12*: `compress` with the code at `{ref}` (a family cut from the teacher trained 12 epochs). *new*: "
             f"the same run resumed from its distillation with `{new}` (this checkout's defaults), so both train "
             "the same TA and sizes from the same start and seed. *24, plateau only*: the same copy resumed with `--epochs 24` under the "
             "`--ref` code (where run). Cells: epochs run / planned | mean accuracy over the sizes % | selected "
             "size and its accuracy % | distillation s. Accuracy on the held-out validation images (digits: "
             "360, one image is 0.28 points); distillation seconds on a shared 2-core machine.", "",
             "| row | seed | teacher % | 12: epochs | mean | selected | s | 24, plateau only: epochs | mean | selected | s "
             "| new: epochs | mean | selected | s | new − 12, mean (points) |",
             "|---|---:|---:|---|---:|---|---:|---|---:|---|---:|---|---:|---|---:|---:|"]
    deltas = []
    for row in args.rows.split(","):
        for seed in seeds:
            folder = run_row(args.ref, args.work, row, seed)
            a, b, c = (figures(folder / k) for k in ("e12", "e24", "new"))
            if a is None or c is None:
                lines.append(f"| {row} | {seed} | failed: see {folder} |")
                continue
            d = 100 * (c["mean"] - a["mean"])
            deltas.append(d)
            lines.append(f"| {row} | {seed} | {100 * a['teacher']:.1f} | {_cell(a)} | {_cell(b)} | {_cell(c)} | {d:+.2f} |")
            print(lines[-1], flush=True)
    if deltas:
        lines += ["", f"Mean over the sizes, new − 12: {statistics.mean(deltas):+.2f} points over {len(deltas)} runs "
                      f"({', '.join(f'{d:+.2f}' for d in deltas)})."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
