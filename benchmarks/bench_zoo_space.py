"""Does every candidate of the teacher-derived space run, for teachers nobody here wrote?

For each zoo teacher (timm and torchvision, randomly initialised, 3x32x32 input,
10 classes), load it the way `compress --teacher timm:NAME --weights ...` does
(built, weights read back, exported and lifted), build the `teacher_scaled` space,
sample N candidates with a fixed seed, and count those that fail to build, to run,
to give (batch, classes) scores, or (for the first few) to export to ONNX.

    python benchmarks/bench_zoo_space.py
    python benchmarks/bench_zoo_space.py --candidates 24 --onnx 4 --teachers timm:regnetx_002

Writes benchmarks/results/zoo_space.md (with `--before REF`, the same figures for the
code at git REF, run from a temporary worktree, in a second column).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (zoo name, keyword arguments): one per family the space must handle
ZOO: tuple[tuple[str, dict[str, Any]], ...] = (
    ("timm:mobilenetv3_small_050", {}),  # inverted residual, squeeze-excite, h-swish
    ("timm:efficientnet_b0", {}),  # inverted residual, SE, SiLU, in-place residual adds
    ("timm:regnetx_002", {}),  # grouped convolutions
    ("timm:regnety_002", {}),  # grouped convolutions with squeeze-excite
    ("torchvision:densenet (small)", {"growth_rate": 8, "block_config": (2, 2, 2), "num_init_features": 16}),
    ("timm:convnext_atto", {}),  # depthwise 7x7, layer norm, layer scale
    ("torchvision:resnet18", {}),
    ("torchvision:resnext (1 block per stage)", {}),  # grouped bottlenecks, 32x4d
    ("timm:deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),  # attention heads
    ("torchvision:mobilenet_v2", {}),
    ("torchvision:mnasnet0_5", {}),
    ("torchvision:squeezenet1_1", {}),  # fire modules: concat
    ("timm:ghostnet_050", {}),  # ghost modules: concat then slice
    ("torchvision:shufflenet_v2_x0_5", {}),  # channel shuffle
)
SHAPE = (3, 32, 32)
CLASSES = 10


def build(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    from compressor.intake.zoo import build_zoo_model, import_zoo

    torch.manual_seed(0)
    if name.startswith("torchvision:resnext"):  # one block per stage: the grouped bottleneck, not the depth
        tv = import_zoo("torchvision")
        return tv.models.resnet.ResNet(tv.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=CLASSES,
                                       groups=32, width_per_group=4).eval()
    if name.startswith("torchvision:densenet"):  # a small DenseNet: the dense concatenations, not the depth
        tv = import_zoo("torchvision")
        return tv.models.densenet.DenseNet(num_classes=CLASSES, **kwargs).eval()
    return build_zoo_model(name, num_classes=CLASSES, in_channels=SHAPE[0], kwargs=kwargs).eval()


def teacher(name: str, kwargs: dict[str, Any]):
    """The model as the pipeline sees it: exported, lifted, checked against the original."""
    from compressor.intake.teacher import _lift
    from compressor.types import InputSpec, Teacher

    model = build(name, kwargs)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial statistics: a cut that breaks a layer shows in the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    sample = torch.randn(8, *SHAPE, generator=g)
    lifted, prunable = _lift(model, "timm", model, sample)
    return Teacher(lifted, InputSpec(SHAPE, CLASSES), name, name.partition(":")[0], "bench", prunable=prunable)


class RandomPick:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.rng.choice(list(choices))


def check(space, t, arch, onnx_dir: Path | None) -> str | None:
    """None if the candidate builds, runs, scores (batch, classes) and (with onnx_dir) exports; else why not."""
    stage = "build"
    try:
        model = space.build(arch, t)
        stage = "run"
        x = torch.randn(2, *SHAPE)
        with torch.no_grad():
            out = model(x)
        if tuple(out.shape) != (2, CLASSES):
            return f"output shape {tuple(out.shape)}"
        if onnx_dir is not None:
            stage = "onnx"
            from compressor.export.onnx_export import export_onnx

            res = export_onnx(model, x, onnx_dir / "candidate.onnx", slim=False)
            if not res.parity_ok:
                return f"onnx: {'; '.join(res.notes)[:160]}"
    except Exception as e:  # noqa: BLE001 - every failure is a figure here
        return f"{stage}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None


def measure(name: str, kwargs: dict[str, Any], n: int, n_onnx: int, seed: int) -> dict[str, Any]:
    from compressor.search.spaces import TeacherScaledSpace

    start = time.perf_counter()
    row: dict[str, Any] = {"teacher": name, "candidates": n, "failed": 0, "first": ""}
    try:
        t = teacher(name, kwargs)
        space = TeacherScaledSpace(t)
    except Exception as e:  # noqa: BLE001
        row.update(space_error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                   seconds=time.perf_counter() - start)
        return row
    rng = random.Random(seed)
    reasons = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            arch = space.suggest(RandomPick(rng))
            why = check(space, t, arch, Path(d) if i < n_onnx else None)
            if why:
                reasons.append(why)
    uncuttable = len(getattr(space, "uncuttable", ()))
    row.update(failed=len(reasons), first=reasons[0] if reasons else "", seconds=time.perf_counter() - start,
               groups=len(space.groups) + uncuttable, blocks=len(space.blocks), uncuttable=uncuttable)
    return row


def _worker(args: argparse.Namespace) -> int:
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    zoo = [z for z in ZOO if not args.teachers or z[0] in args.teachers.split(",")]
    rows = []
    for name, kwargs in zoo:
        row = measure(name, kwargs, args.candidates, args.onnx, args.seed)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    print(json.dumps(rows))
    return 0


def _run_at(ref: str, argv: list[str]) -> list[dict[str, Any]]:
    """This script's figures for the code at git `ref` (a temporary worktree; this script runs from here)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", d, ref], check=True,
                       capture_output=True)
        try:
            out = subprocess.run([sys.executable, __file__, "--worker", *argv], check=True, text=True,
                                 stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": d}, cwd=d)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", d], capture_output=True)
    return json.loads(out.stdout)


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "space_error" in row:
        return "space refused"
    return f"{row['failed']}/{row['candidates']}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=24, help="candidates sampled per teacher")
    p.add_argument("--onnx", type=int, default=3, help="of which the first this many are exported to ONNX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teachers", default="", help="comma-separated zoo names (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--before", default="", help="git ref of the code to compare with (e.g. main)")
    p.add_argument("--out", default=str(RESULTS / "zoo_space.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    inner = [a for a in passed if not a.startswith("--before") and a != args.before and not a.startswith("--out")
             and a != args.out]
    before = {r["teacher"]: r for r in _run_at(args.before, inner)} if args.before else {}
    out = subprocess.run([sys.executable, __file__, "--worker", *inner], check=True, text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    after = json.loads(out.stdout)

    lines = ["# Teacher-derived space on zoo teachers: failing candidates", "",
             f"`python benchmarks/bench_zoo_space.py {shlex.join(passed)}`".replace(" `", "`"), "",
             f"{args.candidates} candidates per teacher sampled from the `teacher_scaled` space (seed {args.seed}), "
             f"input 3x32x32, 10 classes, random weights; a candidate fails if it does not build, run, give "
             f"(batch, 10) scores, or (the first {args.onnx}) export to ONNX with parity. torch {torch.__version__}.",
             ""]
    if before:
        lines += [f"| teacher | failed before ({args.before}) | failed now | droppable blocks before / now | "
                  "groups kept whole now | first failure before | s before / now |", "|---|---|---|---|---|---|---|"]
        for r in after:
            b = before.get(r["teacher"]) or {}
            first_b = b.get("space_error") or b.get("first", "")
            lines.append(f"| {r['teacher']} | {_cell(b or None)} | {_cell(r)} | {b.get('blocks', '-')} / "
                         f"{r.get('blocks', '-')} | {r.get('uncuttable', '-')}/{r.get('groups', '-')} | "
                         f"{first_b[:90]} | {b.get('seconds', 0):.0f} / {r['seconds']:.0f} |")
    else:
        lines += ["| teacher | failed | droppable blocks | groups kept whole | first failure | s |",
                  "|---|---|---|---|---|---|"]
        for r in after:
            lines.append(f"| {r['teacher']} | {_cell(r)} | {r.get('blocks', '-')} | "
                         f"{r.get('uncuttable', '-')}/{r.get('groups', '-')} | "
                         f"{(r.get('space_error') or r['first'])[:90]} | {r['seconds']:.0f} |")
    if before:
        lines += ["", "s: wall seconds per teacher (space set-up, the builds, the exports) on the shared 2-core "
                  "development host, before and now run one after the other, other jobs running. Now costs more: "
                  "every group is test-cut (at 0.25 and 0.75) when the space is set up and for each new depth, "
                  "and graphs that read the batch size (the ViT) export through the dynamo exporter."]
    refused = [r for r in after if "space_error" in r]
    if refused:
        lines += ["", "Spaces refused now (the search goes on with the family spaces):", ""]
        lines += [f"- {r['teacher']}: {r['space_error']}" for r in refused]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
