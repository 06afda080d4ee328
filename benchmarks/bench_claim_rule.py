"""Budget claims judged on two measurements or on three: how often each rule makes a claim, and how
often a later measurement of the same file meets the budget.

For each (ONNX file, budget) it repeats the selection's check `--repeats` times: a first
measurement in this process (as the run's export stage takes it), then two more, each in a fresh
process (`remeasure_in_fresh_process`). The two-measurement rule judges the first two
(`Budget.claim(first, second)`), the three-measurement rule all three (`Budget.claim(first,
second, third)`, what `pipeline.stage_select` does when the first two do not make the claim).
Every fresh-process figure is also scored on its own against the budget (`Budget.fits`): the
share that fit is how often a user re-timing the file would see it meet the budget.

    python benchmarks/bench_claim_rule.py --case run/models/w062/model.onnx:3,32,32:0.100 --repeats 8

Writes benchmarks/results/claim_rule.md (section "Budget claims: two measurements or three").
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", required=True, metavar="ONNX:C,H,W:BUDGET_MS")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--profile", default="host-cpu-1t")
    ap.add_argument("--out", type=Path, default=RESULTS / "claim_rule.md")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    from compressor.budget import Budget
    from compressor.hardware import cpu_model, load_profile, measure_onnx, remeasure_in_fresh_process

    profile = load_profile(args.profile)
    started = time.perf_counter()
    rows = []
    for case in args.case:
        path, shape_text, budget_text = case.rsplit(":", 2)
        shape = tuple(int(v) for v in shape_text.split(","))
        budget = Budget(float(budget_text), f"{budget_text}ms", profile.name, profile.stat)
        two = three = thirds = 0
        fresh: list[float] = []
        fits_fresh = 0
        figures = []
        for _ in range(args.repeats):
            first = measure_onnx(path, profile, shape)
            second = remeasure_in_fresh_process(path, profile, shape)
            third = remeasure_in_fresh_process(path, profile, shape)
            by_two = budget.fits(budget.claim(first, second))
            # the selection takes the third only when the first two do not make the claim
            by_three = by_two or budget.fits(budget.claim(first, second, third))
            two += by_two
            three += by_three
            thirds += not by_two
            for r in (second, third):
                fresh.append(r.value())
                fits_fresh += budget.fits(r)
            figures.append((first.value(), second.value(), third.value(), by_two, by_three))
            print(f"{Path(path).parent.name}: {first.value():.4f} / {second.value():.4f} / {third.value():.4f} ms, "
                  f"two {by_two}, three {by_three}", flush=True)
        rows.append({"case": case, "name": f"{Path(path).parent.name} ({Path(path).parent.parent.parent.name})",
                     "budget": budget.ms, "two": two, "three": three, "thirds": thirds, "fresh": fresh,
                     "fits_fresh": fits_fresh, "figures": figures})

    import torch

    cmd = "python benchmarks/bench_claim_rule.py " + " ".join(sys.argv[1:])
    lines = ["## Budget claims: two measurements or three", "", f"Command: `{cmd}`", ""]
    if args.note:
        lines += [args.note, ""]
    lines += [
        f"Each file's claim checked {args.repeats} times as the selection checks it: a first measurement in "
        "this process, then two in fresh processes; *two*: claims made by the first two (the second with their "
        "distance as its spread); *three*: claims made when the third is taken too (judged with either earlier "
        "one, `Budget.claim`); *fresh fits*: the fresh-process figures that fit the budget on their own, how often "
        f"re-timing the file meets it. Profile `{profile.name}` ({profile.stat}); CPU `{cpu_model()}`, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
        f"whole benchmark {(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "| file | budget ms | claims (two) | claims (three) | thirds taken | fresh fits | fresh min / median / max ms |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        f = sorted(r["fresh"])
        lines.append(f"| {r['name']} | {r['budget']:.4f} | {r['two']}/{args.repeats} | {r['three']}/{args.repeats} | "
                     f"{r['thirds']} | {r['fits_fresh']}/{len(f)} | {f[0]:.4f} / {f[len(f) // 2]:.4f} / {f[-1]:.4f} |")
    lines += ["", "Every check (first / second / third ms, two, three):", ""]
    for r in rows:
        lines.append(f"- {r['name']}: " + "; ".join(
            f"{a:.4f} / {b:.4f} / {c:.4f} {'y' if t else 'n'}{'y' if h else 'n'}" for a, b, c, t, h in r["figures"]))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
