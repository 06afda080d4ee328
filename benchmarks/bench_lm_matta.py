"""Language models: nested Teacher -> TA -> students in one run vs each size distilled alone, per size.

On a GPT-2 teacher folder and its text (`compress example-lm-teacher --out gpt`), the sizes the
example run trains (`--budget 0.5x` on a quiet machine: TA 0.68 of the teacher's compute per token,
students 0.35, 0.245, 0.175; `lm.gpt.scaled_shape`) are obtained three ways, every one starting from
the teacher's importance-sorted weights (`lm.gpt.sort_by_importance`), with the same loop
(`lm.train.train_nested_lm`), optimiser, schedule, batch and number of steps:

  (a) nested: TA + three students in one run (CE + KL(teacher) + KL(TA) for the students);
  (b) independent: each student alone (CE + KL(teacher)), one run per size;
  (c) nested without the TA: the three students in one run, no TA term (w_ta = 0) and no TA.

Scores: validation perplexity and next-token accuracy (`lm.metrics`) of each student, in PyTorch.
Compute is counted as executed: per token, teacher forward + 3 x forward MACs of every size trained
(backward ~ 2 forwards), summed over steps.

    python benchmarks/bench_lm_matta.py --teacher gpt --data python-docs.txt           # 3 seeds
    python benchmarks/bench_lm_matta.py --teacher gpt --data python-docs.txt --seeds 1 --steps 20
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from compressor.config import CompressConfig
from compressor.lm.corpus import random_windows
from compressor.lm.gpt import full_shape, macs_per_token, nested_forward, scaled_shape, sort_by_importance
from compressor.lm.metrics import token_scores
from compressor.lm.train import LMDistillConfig, train_nested_lm
from compressor.tasks.causal_lm import CausalLM, load_lm_teacher

TA, STUDENTS = 0.675, (0.35, 0.245, 0.175)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="gpt")
    ap.add_argument("--data", default="python-docs.txt")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/lm_matta.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher = load_lm_teacher(args.teacher)
    task = CausalLM()
    data = task.load_data(CompressConfig(teacher=args.teacher, data=args.data), teacher)
    calib = random_windows(data.corpus.train, data.context, 16, torch.Generator().manual_seed(0))[:, :-1]
    ordered = sort_by_importance(teacher.model, calib)
    full = full_shape(ordered)
    ta = scaled_shape(full, TA, 16)
    students = [scaled_shape(full, r, 16) for r in STUDENTS]
    cfg = teacher.model.config

    def cost(shapes) -> float:  # MACs per training token: teacher forward + 3 x each trained size's forward
        return macs_per_token(cfg, full, data.context) + 3 * sum(macs_per_token(cfg, s, data.context) for s in shapes)

    def score(model, shape) -> tuple[float, float]:
        ce, acc, _ = token_scores(lambda x: nested_forward(model, x, shape), data.val_windows)
        return float(torch.tensor(ce).exp()), acc

    rows: dict[str, dict[str, list]] = {}
    seconds: dict[str, float] = {"nested": 0.0, "independent": 0.0, "nested_no_ta": 0.0}
    for seed in range(args.seeds):
        dcfg = LMDistillConfig(steps=args.steps, batch_size=args.batch_size, context=data.context, seed=seed)
        t0 = time.perf_counter()
        fam = copy.deepcopy(ordered)
        train_nested_lm(teacher.model, fam, [ta, *students], data.corpus.train, dcfg)
        seconds["nested"] += time.perf_counter() - t0
        for r, s in zip(STUDENTS, students):
            rows.setdefault(f"{r}", {}).setdefault("nested", []).append(score(fam, s))
        t0 = time.perf_counter()
        for r, s in zip(STUDENTS, students):
            alone = copy.deepcopy(ordered)
            train_nested_lm(teacher.model, alone, [s], data.corpus.train, dcfg)
            rows[f"{r}"].setdefault("independent", []).append(score(alone, s))
        seconds["independent"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        fam = copy.deepcopy(ordered)
        train_nested_lm(teacher.model, fam, students, data.corpus.train,
                        LMDistillConfig(**{**dcfg.__dict__, "w_ta": 0.0}))
        seconds["nested_no_ta"] += time.perf_counter() - t0
        for r, s in zip(STUDENTS, students):
            rows[f"{r}"].setdefault("nested_no_ta", []).append(score(fam, s))
        print(f"seed {seed} done", json.dumps(rows), flush=True)
        compute = {"nested": cost([ta, *students]), "independent": sum(cost([s]) for s in students),
                   "nested_no_ta": cost(students)}
        write(args, rows, compute, seconds, ta, students, seeds=seed + 1)  # after every seed: a stopped run keeps its part


def write(args, rows, compute, seconds, ta, students, seeds: int) -> None:
    def mean(xs, i):
        return sum(x[i] for x in xs) / len(xs)

    lines = [f"# Language models: nested (MatTA) vs independent distillation ({seeds} of {args.seeds} seeds, {args.steps} "
             f"steps of {args.batch_size} x 128 tokens each)", "",
             f"Teacher `{args.teacher}`, text `{args.data}`; TA {ta.to_dict()}; students "
             + ", ".join(f"{r} {s.to_dict()}" for r, s in zip(STUDENTS, students)) + ".", "",
             "| student (compute ratio) | nested ppl | independent ppl | nested w/o TA ppl | nested acc | "
             "independent acc | nested w/o TA acc | nested vs independent (ppl, relative) |",
             "|---|---|---|---|---|---|---|---|"]
    for r, by in rows.items():
        n, i, w = by["nested"], by["independent"], by["nested_no_ta"]
        rel = (mean(i, 0) - mean(n, 0)) / mean(i, 0)
        lines.append(f"| {r} | {mean(n, 0):.3f} | {mean(i, 0):.3f} | {mean(w, 0):.3f} | {100 * mean(n, 1):.2f} % | "
                     f"{100 * mean(i, 1):.2f} % | {100 * mean(w, 1):.2f} % | {100 * rel:+.2f} % |")
    ratio = compute["nested"] / compute["independent"]
    lines += ["", f"Compute per training token (executed MACs): nested {compute['nested'] / 1e6:.1f}M, the three "
              f"independent runs {compute['independent'] / 1e6:.1f}M together, nested without TA "
              f"{compute['nested_no_ta'] / 1e6:.1f}M: nested / independent = {ratio:.2f}. Wall seconds over all "
              f"seeds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
