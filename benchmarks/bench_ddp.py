"""Nested distillation on one process vs N torchrun ranks (DistributedDataParallel): accuracy, time, traffic.

For each seed the same nested family is trained twice from the same teacher and TA initialisation:
once by `train_family` in one process, once under ``torchrun --standalone --nproc-per-node N``
(`train_family` on rank 0, `train_family_rank` on the others; gloo on CPU, NCCL with `--device cuda`).
The batch of one optimizer step is the same in both (`--batch-size`, split across the ranks), and so
are the batches, augmentation and sandwich draws, so the accuracies should agree within the seed
noise; they can differ through BatchNorm batch statistics (each rank normalises over its own share)
and float summation order.

Setup (as bench_nested.py's digits case and the pipeline's CNN recipe): digits at 32x32, teacher CNN
[32, 64, 128] trained once on labels, TA CNN [16, 32, 64], sizes w100/w075/w050/w025, lr 1e-2, τ 2,
±2 shift augmentation, no zoo losses. The one-process run gets N threads and each rank one, so both
use the same cores.

Figures: validation accuracy per size and seed; the training loop's own seconds (rank 0's clock) and
each launch's wall seconds (process start to exit: imports, data, rendezvous included); and the
gradient bytes DDP all-reduces per optimizer step, which is every trained parameter's gradient once
(float32; the trained module is the TA, plus loss adapters where zoo losses are used). With a ring
all-reduce each rank sends about 2(N−1)/N times that.

    .venv/bin/python benchmarks/bench_ddp.py                      # 3 seeds, 12 epochs -> benchmarks/results/ddp.md
    .venv/bin/python benchmarks/bench_ddp.py --seeds 1 --epochs 1 --out /tmp/ddp.md   # smoke run
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
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.device import resolve_device  # noqa: E402
from compressor.distill import DistillConfig, train_family  # noqa: E402
from compressor.distill.train import train_family_rank  # noqa: E402
from compressor.evaluate import accuracy, predict_logits  # noqa: E402
from compressor.families import build_family  # noqa: E402
from compressor.intake.data import load_data  # noqa: E402
from compressor.ranks import from_env, process_group  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZES = [("w100", 1.0), ("w075", 0.75), ("w050", 0.5), ("w025", 0.25)]
TEACHER = {"family": "cnn", "widths": [32, 64, 128], "depths": [1, 1, 1]}
TA = {"family": "cnn", "widths": [16, 32, 64], "depths": [1, 1, 1]}
IMAGE_SIZE = 32


def recipe(epochs: int, batch_size: int, seed: int) -> DistillConfig:
    return DistillConfig(epochs=epochs, batch_size=batch_size, lr=1e-2, temperature=2.0, augment="shift", shift=2,
                         seed=seed)


# ------------------------------------------------------------------------------ one launch (a child process)

def worker(args: argparse.Namespace) -> None:
    """Train the family once: alone, or as one rank of a torchrun launch. Rank 0 writes the figures."""
    torch.set_num_threads(args.threads)
    data = load_data("digits", seed=0, image_size=IMAGE_SIZE)
    shape, classes = data.input_shape, data.num_classes
    teacher = build_family(TEACHER, shape, classes)
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    teacher.eval()
    torch.manual_seed(args.seed)
    ta = build_family(TA, shape, classes)
    param_bytes = sum(p.numel() * p.element_size() for p in ta.parameters() if p.requires_grad)
    cfg = recipe(args.epochs, args.batch_size, args.seed)
    ranks = from_env()
    device = resolve_device(args.device, ranks.local_rank if ranks else None)
    if ranks is None:
        with tempfile.TemporaryDirectory() as d:
            r = train_family(teacher, ta, data, sizes=SIZES, config=cfg, run_dir=Path(d), device=device)
    else:
        with process_group(ranks, device):
            if not ranks.is_main:
                train_family_rank(teacher, ta, data, sizes=SIZES, config=cfg, ranks=ranks, device=device)
                return
            with tempfile.TemporaryDirectory() as d:
                r = train_family(teacher, ta, data, sizes=SIZES, config=cfg, run_dir=Path(d), device=device,
                                 ranks=ranks)
    steps = len(data.x_train) // cfg.batch_size
    Path(args.result).write_text(json.dumps({
        "val_acc": r.val_acc, "train_seconds": r.train_seconds, "history": r.history, "train_flops": r.train_flops,
        "param_bytes": param_bytes, "params": sum(p.numel() for p in ta.parameters()), "steps_per_epoch": steps,
        "ranks": ranks.world_size if ranks else 1}))


# ------------------------------------------------------------------------------ the comparison

def train_teacher(path: Path, epochs: int) -> float:
    """The teacher, trained once on labels (the TA recipe without teacher terms); its accuracy."""
    data = load_data("digits", seed=0, image_size=IMAGE_SIZE)
    torch.manual_seed(1000)
    teacher = build_family(TEACHER, data.input_shape, data.num_classes)
    labels_only = DistillConfig(**{**recipe(epochs, 64, 0).__dict__, "ta_kd": 0.0, "beta": 0.0, "alpha": 0.0})
    with tempfile.TemporaryDirectory() as d:
        train_family(teacher, teacher, data, sizes=[("w100", 1.0)], config=labels_only, run_dir=Path(d))
    torch.save(teacher.state_dict(), path)
    return accuracy(predict_logits(teacher.eval(), data.x_val), data.y_val)


def launch(command: list[str], result: Path, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(result.read_text()), "wall_seconds": wall}


def compare(args: argparse.Namespace, teacher: Path, scratch: Path) -> list[dict]:
    torchrun = Path(sys.executable).with_name("torchrun")
    runs = []
    for seed in range(args.seeds):
        common = [str(Path(__file__).resolve()), "--worker", "--teacher", str(teacher), "--seed", str(seed),
                  "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        one = launch([sys.executable, *common, "--threads", str(args.ranks), "--result", str(scratch / "one.json")],
                     scratch / "one.json", env)
        many = launch([str(torchrun), "--standalone", "--nproc-per-node", str(args.ranks), *common, "--threads", "1",
                       "--result", str(scratch / "many.json")], scratch / "many.json", env)
        runs.append({"seed": seed, "one": one, "many": many})
        print(f"seed {seed}: " + "  ".join(f"{n} {one['val_acc'][n]:.3f}/{many['val_acc'][n]:.3f}" for n, _ in SIZES)
              + f"  train {one['train_seconds']:.0f}/{many['train_seconds']:.0f} s", flush=True)
    return runs


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def markdown(runs: list[dict], args: argparse.Namespace, teacher_acc: float, argv: Sequence[str]) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    n = args.ranks
    first = runs[0]["one"]
    out = [f"## Nested distillation: 1 process vs {n} torchrun ranks (DDP)", "",
           f"Command: `{' '.join(['python', 'benchmarks/bench_ddp.py', *argv])}`", "",
           f"Machine: {cpu}, {os.cpu_count()} logical cores visible, torch {torch.__version__}, device "
           f"{args.device}; the 1-process run has {n} threads, each rank 1. Shared with other jobs: wall times are "
           "indicative.", "",
           f"digits {IMAGE_SIZE}x{IMAGE_SIZE}; teacher CNN {TEACHER['widths']} ({100 * teacher_acc:.1f}% val, trained "
           f"once on labels); TA CNN {TA['widths']}, sizes {', '.join(s for s, _ in SIZES)}; {args.epochs} epochs, "
           f"batch {args.batch_size} per optimizer step ({args.batch_size // n} or so per rank), lr 1e-2, τ 2, "
           f"±2 shifts; {len(runs)} seeds.", "",
           "### Validation accuracy (%)", "",
           f"| seed | size | 1 process | {n} ranks | difference |", "|---|---|---|---|---|"]
    for run in runs:
        for size, _ in SIZES:
            a, b = run["one"]["val_acc"][size], run["many"]["val_acc"][size]
            out.append(f"| {run['seed']} | {size} | {100 * a:.1f} | {100 * b:.1f} | {100 * (b - a):+.1f} |")
    out += ["", f"| size | 1 process (mean ± sd) | {n} ranks (mean ± sd) | mean difference |", "|---|---|---|---|"]
    for size, _ in SIZES:
        ones = [r["one"]["val_acc"][size] for r in runs]
        manys = [r["many"]["val_acc"][size] for r in runs]
        diff = statistics.mean(b - a for a, b in zip(ones, manys))
        out.append(f"| {size} | {_mean_sd(ones)} | {_mean_sd(manys)} | {100 * diff:+.1f} |")
    out += ["", "### Time (s)", "", f"| seed | training loop, 1 process | training loop, {n} ranks | "
            f"launch wall, 1 process | launch wall, {n} ranks |", "|---|---|---|---|---|"]
    for run in runs:
        out.append(f"| {run['seed']} | {run['one']['train_seconds']:.1f} | {run['many']['train_seconds']:.1f} | "
                   f"{run['one']['wall_seconds']:.1f} | {run['many']['wall_seconds']:.1f} |")
    gradient = first["param_bytes"]
    ring = 2 * (n - 1) / n * gradient
    out += ["", "### Gradient traffic", "",
            f"Trained module: the TA, {first['params']:,} parameters. All-reduced per optimizer step: "
            f"**{gradient / 1e6:.3f} MB** of float32 gradients (each rank sends about {ring / 1e6:.3f} MB with a ring "
            f"all-reduce); {first['steps_per_epoch']} steps per epoch, {gradient * first['steps_per_epoch'] / 1e6:.1f} "
            "MB per epoch. Training compute is the same in both (the whole batch's MACs, counted once): "
            f"{first['train_flops'] / 1e12:.3f} TMAC.", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--out", type=Path, default=RESULTS / "ddp.md")
    # one launch's part (run by this script itself, alone or under torchrun)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d)
        teacher = scratch / "teacher.pt"
        teacher_acc = train_teacher(teacher, args.teacher_epochs)
        print(f"teacher {teacher_acc:.4f}", flush=True)
        runs = compare(args, teacher, scratch)
    args.out.write_text(markdown(runs, args, teacher_acc, argv))
    args.out.with_suffix(".json").write_text(json.dumps({"argv": argv, "teacher_acc": teacher_acc, "runs": runs},
                                                        indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
