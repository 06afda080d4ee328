"""Distillation that diverges, rolled back: the same runs distilled without and with the guard.

For each row (a teacher and a budget), `compress` runs to the end once with the code at `--ref`
(a checkout from before `compressor/distill/guard.py`); then a copy of that run folder, with the
distillation and everything after it removed, is resumed with this checkout's code (`--resume`:
the teacher's timing, the search and the measurements before training are reused), so both sides
distil the same TA and sizes from the same start with the same seed. Per row: the rollbacks, every
size's accuracy before and after, the selected size, the distillation seconds.

Teachers: `demo` (the demo's example teacher, as `bench_pipeline_time.py` makes it) or a zoo
teacher as `bench_zoo.py` trains and caches it (`benchmarks/_work/zoo/teachers/`, data
`digits3x32.npz`; trained here when missing).

    python benchmarks/bench_rollback.py --ref /path/to/old/checkout \\
        --rows 'torchvision:squeezenet1_1@0.5x,timm:convnext_atto@0.25x,demo@0.5x'

Writes benchmarks/results/rollback.md (section "Distillation that diverges").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "benchmarks" / "_work" / "rollback"
RESULTS = ROOT / "benchmarks" / "results"
TEACHER_EPOCHS = 30  # bench_zoo.py's default (--teacher-epochs)
# what distillation writes, and everything a run writes after it: removed before the resume
AFTER_DISTILL = ("family", "models", "plots", "manifest.json", "report.md", "report.html")
AFTER_EXPORT = AFTER_DISTILL[1:]  # the trained family kept


def teacher_and_data(name: str) -> tuple[Path, list[str]]:
    if name == "demo":
        from bench_pipeline_time import make_teacher

        return make_teacher("example", "example", epochs=8)[0], []
    from bench_zoo import dataset, train_teacher

    data = dataset()
    path, _ = train_teacher(name, data, TEACHER_EPOCHS)  # bench_zoo's teacher, trained here when missing
    return path, ["--data", str(data)]


def _compress(code: Path, args: list[str], log: Path) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(code), "COMPRESSOR_CACHE_DIR": str(WORK / "cache")}
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "compressor", *args, "--no-progress"], cwd=code, env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    return proc.returncode, time.perf_counter() - start


def _figures(run: Path, exit_code: int, wall: float) -> dict:
    m = json.loads((run / "manifest.json").read_text())
    training = m.get("training") or {}
    return {"exit": exit_code, "wall_s": wall, "selected": m.get("selected"),
            "accuracy": {s["name"]: s["accuracy"] for s in m["models"]},
            "fits": {s["name"]: bool(s.get("meets_budget")) for s in m["models"]},
            "teacher_accuracy": m["teacher"].get("accuracy"), "budget_ms": m["budget"]["ms"],
            "distill_s": (m.get("stages") or {}).get("distill"),
            "losses": [h.get("loss") for h in training.get("history") or []],
            "rollbacks": training.get("rollbacks") or []}


def copy_to_distill(run: Path, out: Path) -> None:
    """A copy of finished run `run` at `out` with its distillation and everything after it removed: resumed,
    it reuses the teacher timing, the search and the checks before training, and trains the same family."""
    _copy_without(run, out, AFTER_DISTILL)


def copy_to_export(run: Path, out: Path) -> None:
    """A copy of finished run `run` at `out` with its export and everything after it removed: resumed, it
    reuses the trained family (`family/`) and exports, measures and selects its sizes again."""
    _copy_without(run, out, AFTER_EXPORT)


def _copy_without(run: Path, out: Path, parts: tuple[str, ...]) -> None:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out)
    for part in parts:
        target = out / part
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for card in out.glob("model_card_*.md"):
        card.unlink()


def run_row(ref: Path, row: str) -> dict:
    name, budget = row.rsplit("@", 1)
    teacher, data = teacher_and_data(name)
    folder = WORK / row.replace(":", "-").replace("@", "-").replace(" ", "_")
    before, after = folder / "before", folder / "after"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    code, wall = _compress(ref, ["--teacher", str(teacher), *data, "--budget", budget, "--seed", "0",
                                 "--out", str(before)], folder / "before.log")
    if not (before / "manifest.json").exists():
        raise SystemExit(f"{row}: the run with {ref} wrote no manifest (exit {code}); see {folder / 'before.log'}")
    copy_to_distill(before, after)
    config = json.loads((after / "config.json").read_text())
    (folder / "resume.json").write_text(json.dumps({**config, "out": str(after), "resume": True}))
    code2, wall2 = _compress(ROOT, ["--config", str(folder / "resume.json")], folder / "after.log")
    if not (after / "manifest.json").exists():
        raise SystemExit(f"{row}: the resumed run wrote no manifest (exit {code2}); see {folder / 'after.log'}")
    return {"row": row, "before": _figures(before, code, wall), "after": _figures(after, code2, wall2)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report(rows: list[dict], ref: Path, wall: float, note: str) -> str:
    import torch
    from bench_pipeline_time import _describe  # "<short hash> <subject>" of a checkout

    cmd = "python benchmarks/bench_rollback.py " + " ".join(a if " " not in a else repr(a) for a in sys.argv[1:])
    lines = ["## Distillation that diverges: rolled back to its best epoch at a lower learning rate", "",
             f"Command: `{cmd}`", ""]
    if note:
        lines += [note, ""]
    lines += [
        "Each row: `compress --teacher T --budget B --seed 0` run to the end with the code before the guard "
        f"(*before*: `{_describe(ref)}`), then a copy of that run folder with the distillation and everything "
        f"after it removed, resumed with this code (*after*: `{_describe(ROOT)}`): the teacher's timing, the "
        "search and the measurements before training are reused, so both sides distil the same TA and sizes "
        "from the same start and seed. Accuracy is each exported size's on the validation split (zoo: 359 "
        "held-out digits, one image 0.28 points).",
        "",
        f"- {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}; whole benchmark {wall / 60:.1f} min.",
        "",
        "| teacher @ budget | teacher acc % | rollbacks (epoch: loss / lowest -> lr x) | selected before | "
        "acc % | selected after | acc % | Δ selected | mean Δ over sizes | distill s before / after |",
        "|---|---:|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        b, a = r["before"], r["after"]
        rb = "; ".join(f"{e['epoch']}: {e['loss'] if isinstance(e['loss'], str) else round(e['loss'], 2)} / "
                       f"{e['best_loss']:.2f} -> {e['lr_scale']:.2g}" for e in a["rollbacks"]) or "none"
        sel_b, sel_a = b["accuracy"].get(b["selected"]), a["accuracy"].get(a["selected"])
        common = [n for n in a["accuracy"] if n in b["accuracy"]]
        mean = (sum(a["accuracy"][n] - b["accuracy"][n] for n in common) / len(common)) if common else None
        delta = f"{100 * (sel_a - sel_b):+.1f}" if sel_a is not None and sel_b is not None else "-"
        lines.append(f"| {r['row']} | {_pct(a['teacher_accuracy'])} | {rb} | {b['selected'] or 'none (exit 3)'} | "
                     f"{_pct(sel_b)} | {a['selected'] or 'none (exit 3)'} | {_pct(sel_a)} | {delta} | "
                     f"{'-' if mean is None else f'{100 * mean:+.1f}'} | "
                     f"{b['distill_s'] or 0:.0f} / {a['distill_s'] or 0:.0f} |")
    lines += ["", "Every size, before -> after (accuracy %):", ""]
    for r in rows:
        b, a = r["before"], r["after"]
        sizes = ", ".join(f"{n} {_pct(b['accuracy'].get(n))} -> {_pct(acc)}" for n, acc in a["accuracy"].items())
        lines.append(f"- {r['row']}: {sizes}; epoch losses before "
                     f"{[round(x, 2) for x in b['losses'] if x is not None]}, after "
                     f"{[round(x, 2) for x in a['losses'] if x is not None]}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", type=Path, required=True, help="checkout of the code before the guard")
    ap.add_argument("--rows", required=True, help="comma list of TEACHER@BUDGET (demo@0.5x, timm:convnext_atto@0.25x)")
    ap.add_argument("--out", type=Path, default=RESULTS / "rollback.md")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for row in args.rows.split(","):
        rows.append(run_row(args.ref.resolve(), row))
        a = rows[-1]["after"]
        print(f"{row}: selected {rows[-1]['before']['selected']} -> {a['selected']}, rollbacks {len(a['rollbacks'])}",
              flush=True)
        (WORK / "rows.json").write_text(json.dumps(rows, indent=1))
    args.out.write_text(report(rows, args.ref.resolve(), time.perf_counter() - started, args.note))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
