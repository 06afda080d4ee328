"""Is a measured p50 repeatable? The same model measured in separate processes.

Exports one fixed candidate CNN (a residual network, 1x32x32 input) to ONNX once,
then runs `measure_onnx` on it in N fresh Python processes, one after another,
with the profile's own settings. Each process pays its own warm-up, thread pool
and allocator start-up, which is what a user re-running `compress profile` sees.
Reports every run's p50, p99, CoV and whether it re-measured, and the spread
max/min of the p50s; then the same spread for the figure a relative budget rests on
(`hardware.steadier`: the lower of two measurements, here consecutive runs paired).

    python benchmarks/bench_measure_stability.py [--runs 12] [--profile host-cpu-1t]
    python benchmarks/bench_measure_stability.py --onnx teacher.onnx --shape 3,32,32   # another model

Writes benchmarks/results/measure_stability.md (section "Measurement stability").
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# one fixed model: three stages of residual blocks, about 50 MFLOPs
ARCH = {"family": "residual", "kernel": 3, "blocks": [[16, 1], [16, 1], [32, 2], [32, 1], [64, 2], [64, 1]]}
SHAPE = (1, 32, 32)


def child(onnx_path: str, profile_name: str, shape: tuple[int, ...]) -> None:
    """Runs in a fresh process: measure once, print the report as JSON."""
    from compressor.hardware import load_profile, measure_onnx

    r = measure_onnx(onnx_path, load_profile(profile_name), shape)
    print(json.dumps({"p50": r.p50_ms, "p90": r.p90_ms, "p99": r.p99_ms, "cov": r.cov, "samples": r.samples,
                      "remeasured": bool(r.env.get("remeasured")), "robust_cov": r.env.get("robust_cov")}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--profile", default="host-cpu-1t")
    ap.add_argument("--onnx", type=Path, help="time this ONNX file instead of the built-in residual CNN")
    ap.add_argument("--shape", default="1,32,32", help="its input shape without the batch (default 1,32,32)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "measure_stability.md")
    ap.add_argument("--note", default="taken on a SHARED machine (other jobs on the same 2 cores): noisy")
    ap.add_argument("--child", nargs=2, metavar=("ONNX", "PROFILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    if args.child:
        child(*args.child, shape)
        return 0
    command = " ".join(["python", "benchmarks/bench_measure_stability.py", *sys.argv[1:]])

    from compressor.hardware import build_candidate, cpu_model, layer_costs, load_profile
    from compressor.hardware._onnx import export_for_timing

    profile = load_profile(args.profile)
    if args.onnx:
        what = f"`{args.onnx.name}`, {'x'.join(map(str, shape))} input"
    else:
        shape = SHAPE
        model = build_candidate(ARCH, SHAPE)
        what = (f"residual CNN, {sum(c.flops for c in layer_costs(model, SHAPE)) / 1e6:.1f} MFLOPs, "
                f"1x32x32 input")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx.resolve() if args.onnx else export_for_timing(model, SHAPE, Path(tmp) / "model.onnx")
        for i in range(args.runs):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), profile.name,
                                  "--shape", ",".join(map(str, shape))],
                                 check=True, capture_output=True, text=True, cwd=ROOT)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {i + 1}: p50 {runs[-1]['p50']:.4f} ms, CoV {runs[-1]['cov']:.1%}", flush=True)
    p50s = [r["p50"] for r in runs]
    lines = [
        "## Measurement stability",
        "",
        f"Command: `{command}`",
        "",
        f"- {args.note}.",
        f"- One model ({what}) measured in {args.runs} separate "
        f"processes on `{profile.name}` ({profile.threads or 'all'} thread(s), warm-up {profile.warmup_runs} "
        f"runs / {profile.warmup_seconds} s, at least {profile.repeats} runs and {profile.min_seconds} s); "
        f"CPU `{cpu_model()}`.",
        "",
        "| run | p50 (ms) | p90 (ms) | p99 (ms) | CoV | robust CoV | samples | re-measured |",
        "|---:|---:|---:|---:|---:|---:|---:|:---:|",
        *[f"| {i + 1} | {r['p50']:.4f} | {r['p90']:.4f} | {r['p99']:.4f} | {r['cov']:.1%} | "
          f"{r['robust_cov']:.1%} | {r['samples']} | {'yes' if r['remeasured'] else 'no'} |"
          for i, r in enumerate(runs)],
        "",
        f"p50 spread across processes: max/min = **{max(p50s) / min(p50s):.3f}** "
        f"(min {min(p50s):.4f} ms, max {max(p50s):.4f} ms); "
        f"{sum(p > 1.1 * min(p50s) for p in p50s)} of {len(p50s)} runs more than 10 % above the lowest.",
        "",
    ]
    pairs = [min(a, b) for a, b in zip(p50s[::2], p50s[1::2])]
    if len(pairs) > 1:
        lines += [f"The lower of two runs (runs 1-2, 3-4, ...: what `hardware.steadier` keeps for a relative "
                  f"budget's teacher figure): max/min = **{max(pairs) / min(pairs):.3f}** over {len(pairs)} pairs "
                  f"({', '.join(f'{p:.4f}' for p in pairs)} ms).", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
