"""Language models: nested Teacher -> TA -> students in one run vs each size distilled alone, per size.

On a GPT-2 teacher folder and its text (`compress example-lm-teacher --out gpt`), the sizes the
example run trains (`--budget 0.5x` on a quiet machine: TA 0.675 of the teacher's compute per token,
students 0.35, 0.245, 0.175; `lm.gpt.scaled_shape`) are obtained five ways, every one starting from
the teacher's importance-sorted weights (`lm.gpt.sort_by_importance`), with the same loop
(`lm.train.train_nested_lm`), optimiser, schedule and batch:

  independent   each student alone, CE + KL(teacher), `--steps` steps per student (the reference);
  chain         the default recipe: one size per step (each student twice per TA step), the TA taught
                by the teacher, each student by the TA (MatTA's teacher -> TA -> student chain), as
                many steps as fit in `--compute` times the independent runs' compute;
  no TA         one student per step, each taught by the teacher, no TA (same compute as `chain`);
  sampled       one size per step as in chain, the TA and the students all taught by the teacher
                (same compute);
  all           every size every step, students taught by teacher and TA (`--steps` steps: the
                earlier recipe, about the independent runs' compute);
  chain + TAID  chain with TAID's interpolated targets (`--lm-taid`; same steps as chain).

Every size keeps the teacher's blocks in their order of importance (`lm.gpt.layer_order`, what
the pipeline does); `chain (first blocks)` and `independent (first blocks)` are the same two ways
with each size keeping the teacher's first blocks instead (the earlier nesting), for comparison.

Scores: validation perplexity (per byte) and next-token accuracy (`lm.metrics`) of each size, in
PyTorch. Compute is counted as executed (`LMTraining.trained` / `.targets`): 3 x forward MACs per
token for every pass with a backward, 1 x for every forward-only pass (the teacher's, the TA's
targets), summed over steps.

    python benchmarks/bench_lm_matta.py --teacher gpt --data python-docs.txt           # 3 seeds
    python benchmarks/bench_lm_matta.py --teacher gpt --data python-docs.txt --seeds 1 --steps 20
    # the 6-layer teacher (compress example-lm-teacher --out gpt6 --layers 6 --d-model 256 --heads 8),
    # four of the ways, then chain against independent at equal compute
    python benchmarks/bench_lm_matta.py --teacher gpt6 --ways "chain,independent,no TA,chain + TAID"
    python benchmarks/bench_lm_matta.py --teacher gpt6 --ways chain,independent --compute 1.0
    # which blocks the sizes keep: in order of importance against the first blocks
    python benchmarks/bench_lm_matta.py --teacher gpt6 --ways "chain,independent,chain (first blocks),independent (first blocks)"
    # every block kept, heads and FFN scaled (MatFormer's nesting), each size's files timed before training
    python benchmarks/bench_lm_matta.py --teacher gpt6 --shape-rule width --latency --ways "chain,independent,no TA"
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from pathlib import Path

import torch

from compressor.config import CompressConfig
from compressor.lm.corpus import random_windows
from compressor.lm.gpt import (LAYER_ORDER, SHAPE_RULES, full_shape, macs_per_token, nested_forward, scaled_shape,
                               sort_by_importance)
from compressor.lm.metrics import token_scores
from compressor.lm.train import LMDistillConfig, LMTraining, name, train_nested_lm
from compressor.tasks.causal_lm import CausalLM, load_lm_teacher

TA, STUDENTS = 0.675, (0.35, 0.245, 0.175)
FIRST = " (first blocks)"  # the way with every size keeping the teacher's first blocks
WAYS = ("chain", "independent", "no TA", "sampled", "all", "chain + TAID", "chain" + FIRST, "independent" + FIRST)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="gpt")
    ap.add_argument("--data", default="python-docs.txt")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150, help="steps of each independent run and of `all`")
    ap.add_argument("--compute", type=float, default=0.5,
                    help="compute of the sampled recipes as a fraction of the independent runs' (default 0.5)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/lm_matta.md")
    ap.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of: " + ", ".join(WAYS))
    ap.add_argument("--latency", action="store_true",
                    help="also time each size's dense ONNX files (one 128-token forward and one KV-cache decoder "
                         "step, host-cpu-1t) before training")
    ap.add_argument("--shape-rule", default="balanced", choices=SHAPE_RULES,
                    help="how a compute ratio becomes a shape (`lm.gpt.scaled_shape`): balanced scales depth and "
                         "width by its square root, width keeps every block")
    args = ap.parse_args()
    args.ways = tuple(w for w in WAYS if w in {x.strip() for x in args.ways.split(",")})
    if "independent" not in args.ways:
        ap.error("--ways must include independent: compute is counted against it")
    torch.set_num_threads(2)
    teacher = load_lm_teacher(args.teacher)
    task = CausalLM()
    data = task.load_data(CompressConfig(teacher=args.teacher, data=args.data), teacher)
    calib = random_windows(data.corpus.train, data.context, 16, torch.Generator().manual_seed(0))[:, :-1]
    ordered = sort_by_importance(teacher.model, calib)
    first_blocks = copy.deepcopy(ordered)
    setattr(first_blocks.config, LAYER_ORDER, list(range(first_blocks.config.n_layer)))
    print("blocks in order of importance:", getattr(ordered.config, LAYER_ORDER), flush=True)
    full = full_shape(ordered)
    ta = scaled_shape(full, TA, 16, args.shape_rule)
    students = [scaled_shape(full, r, 16, args.shape_rule) for r in STUDENTS]
    cfg = teacher.model.config
    macs = {name(s): macs_per_token(cfg, s, data.context) for s in [full, ta, *students]}
    macs["teacher"] = macs[name(full)]

    timed = time_shapes(ordered, dict(zip(("teacher", "TA", *map(str, STUDENTS)), [full, ta, *students])),
                        data.context) if args.latency else {}

    def executed(run: LMTraining) -> float:  # MACs per token over the whole run
        return (sum(3 * macs[k] * n for k, n in run.trained.items())
                + sum(macs[k] * n for k, n in run.targets.items()))

    t_ms, a_ms = macs["teacher"], macs[name(ta)]
    s_mean = sum(macs[name(s)] for s in students) / len(students)
    independent_total = args.steps * len(students) * (t_ms + 3 * s_mean)
    k = LMDistillConfig().student_rounds * len(students)  # student steps per TA step
    per_step = {  # expected MACs per token and step of each sampled recipe (one size per step)
        "chain": (t_ms + 3 * a_ms + k * (a_ms + 3 * s_mean)) / (k + 1),
        "no TA": t_ms + 3 * s_mean,
        "sampled": t_ms + 3 * (a_ms + k * s_mean) / (k + 1),
    }
    steps = {k: int(args.compute * independent_total / v) for k, v in per_step.items()}
    steps["all"] = args.steps
    steps["chain + TAID"] = steps["chain" + FIRST] = steps["chain"]

    def score(model, shape) -> tuple[float, float]:
        ce, acc, _ = token_scores(lambda x: nested_forward(model, x, shape), data.val_windows)
        return float(torch.tensor(ce).exp()), acc

    rows: dict[str, dict[str, list]] = {}
    compute: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    t_score = score(ordered, full)
    for seed in range(args.seeds):
        def run(way: str, shapes, recipe: str, n: int, taid: bool = False) -> tuple[torch.nn.Module, LMTraining]:
            fam = copy.deepcopy(first_blocks if way.endswith(FIRST) else ordered)
            t0 = time.perf_counter()
            trained = train_nested_lm(teacher.model, fam, shapes, data.corpus.train,
                                      LMDistillConfig(steps=n, batch_size=args.batch_size, context=data.context,
                                                      seed=seed, recipe=recipe, taid=taid))
            seconds[way] = seconds.get(way, 0.0) + time.perf_counter() - t0
            return fam, trained

        for way in args.ways:
            if way.startswith("independent"):
                total = 0.0
                for r, s in zip(STUDENTS, students):
                    fam, trained = run(way, [s], "chain", args.steps)  # one size: CE + KL(teacher) every step
                    total += executed(trained)
                    rows.setdefault(f"{r}", {}).setdefault(way, []).append(score(fam, s))
            else:
                shapes = students if way == "no TA" else [ta, *students]
                recipe = "sampled" if way == "no TA" else "chain" if way.startswith("chain") else way
                fam, trained = run(way, shapes, recipe, steps[way], taid=way.endswith("TAID"))
                total = executed(trained)
                for r, s in zip(("TA", *STUDENTS), [ta, *students]):
                    if s in shapes:
                        rows.setdefault(f"{r}", {}).setdefault(way, []).append(score(fam, s))
            compute.setdefault(way, []).append(total)
        print(f"seed {seed} done", json.dumps(rows), flush=True)
        write(args, rows, compute, seconds, steps, ta, students, t_score, macs, timed, seeds=seed + 1)  # a stopped run keeps its part


def time_shapes(model, shapes: dict, context: int) -> dict[str, float]:
    """p50 ms of one `context`-token forward of each shape's dense ONNX file on host-cpu-1t (untrained
    weights time as trained ones do)."""
    import tempfile

    from compressor.export import export_onnx
    from compressor.hardware import latency_report, load_profile
    from compressor.lm.gpt import LogitsOnly, dense_model

    from compressor.lm.decode import export_decode_step, measure_decode_step

    profile, out = load_profile("host-cpu-1t"), {}
    with tempfile.TemporaryDirectory() as d:
        for label, s in shapes.items():
            ids = torch.randint(0, model.config.vocab_size, (1, context))
            dense = dense_model(model, s).eval()
            onnx = export_onnx(LogitsOnly(dense), ids, Path(d) / f"{name(s)}.onnx",
                               input_name="input_ids", dynamic={1: "sequence"}, slim=False, atol=1e-3)
            step = export_decode_step(dense, ids, Path(d) / f"{name(s)}.decode.onnx")
            window = latency_report(profile, (context,), onnx_path=onnx.path).value()
            token = measure_decode_step(step.path, dense, profile, step.past).value()
            out[label] = f"{window:.3f} / {token:.3f}"
            print(f"{label} {s.to_dict()}: {out[label]} ms", flush=True)
    return out


def write(args, rows, compute, seconds, steps, ta, students, t_score, macs, timed, seeds: int) -> None:
    def mean(xs, i):
        return sum(x[i] for x in xs) / len(xs)

    ref = sum(compute["independent"]) / len(compute["independent"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    lines = [f"# Language models: nested (MatTA) vs independent distillation ({seeds} of {args.seeds} seeds)", "",
             f"Teacher `{args.teacher}` (perplexity {t_score[0]:.3f}, next-token accuracy {100 * t_score[1]:.2f} %), "
             f"text `{args.data}`, batch {args.batch_size} x 128 tokens; shapes by the `{args.shape_rule}` rule: "
             f"TA {ta.to_dict()} ({macs[name(ta)] / macs['teacher']:.3f} of the teacher's MACs per token); "
             "students " + ", ".join(f"{r} {s.to_dict()} ({macs[name(s)] / macs['teacher']:.3f})"
                                     for r, s in zip(STUDENTS, students)) + f". Code at {commit}."
             + ("" if not timed else " Each dense size's ONNX files, p50 on host-cpu-1t, one 128-token forward / "
                "one generated token after 127 cached (KV-cache step): "
                + ", ".join(f"{k} {v} ms" for k, v in timed.items()) + "."), "",
             "| way | steps | compute vs independent | wall s (all seeds) |", "|---|---:|---:|---:|"]
    for way in args.ways:
        c = sum(compute[way]) / len(compute[way])
        alone = way.startswith("independent")
        n = args.steps if alone else steps[way]
        lines.append(f"| {way} | {n}{' per student' if alone else ''} | {c / ref:.2f} | "
                     f"{seconds[way]:.0f} |")
    for metric, i, fmt in (("perplexity (lower is better)", 0, "{:.3f}"),
                           ("next-token accuracy %", 1, "{:.2f}")):
        lines += ["", f"{metric.capitalize()}, mean over seeds; last column: chain vs independent, relative "
                  "(positive: chain better)", "",
                  "| size (compute ratio) | " + " | ".join(args.ways) + " | chain vs independent |",
                  "|---|" + "---:|" * (len(args.ways) + 1)]
        for r, by in rows.items():
            vals = {w: (100 if i else 1) * mean(by[w], i) for w in args.ways if w in by}
            cells = [fmt.format(vals[w]) if w in vals else "-" for w in args.ways]
            rel = "-"
            if "independent" in vals and "chain" in vals:
                d = (vals["independent"] - vals["chain"]) if i == 0 else (vals["chain"] - vals["independent"])
                rel = f"{100 * d / vals['independent']:+.2f} %"
            lines.append(f"| {r} | " + " | ".join(cells) + f" | {rel} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
