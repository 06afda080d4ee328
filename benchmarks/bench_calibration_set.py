"""Does the calibration set cover the networks the search judges? Old set against new, side by side.

The host predictor is fitted on the networks a calibration times. `sample_candidates` draws
random CNNs whose first blocks run at full resolution (0.04-0.09 ms and up at 32x32); the
built-in student families' smallest members (a stride-2 stem, one to three blocks) run in a
fraction of that. `calibration_candidates` adds a quarter of such small networks. Both sets
(16 networks each, as `compress` times) are timed here in one run, each fit judged on the same
held-out networks: random CNNs (`sample_candidates`, another seed) and students of the
built-in `cnn` and `mobile` families at the sizes a small budget asks for.

    python benchmarks/bench_calibration_set.py [--shape 3,32,32] [--out benchmarks/results/calibration_set.md]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.families import build_family  # noqa: E402
from compressor.hardware import (  # noqa: E402
    LatencyPredictor,
    calibration_candidates,
    cpu_model,
    load_profile,
    measure_onnx,
    quick_timing,
    sample_candidates,
)
from compressor.hardware._onnx import export_for_timing  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# students of the built-in families as a small budget's search draws them (stride-2 stems, few blocks)
FAMILY_STUDENTS = [
    {"family": "cnn", "widths": [16, 16], "depths": [1, 1], "kernel": 3, "stem": 2},
    {"family": "cnn", "widths": [16, 16, 16], "depths": [1, 1, 1], "kernel": 3, "stem": 2},
    {"family": "cnn", "widths": [32, 32], "depths": [1, 1], "kernel": 3, "stem": 2},
    {"family": "cnn", "widths": [32, 64], "depths": [1, 1], "kernel": 3, "stem": 2},
    {"family": "cnn", "widths": [16, 32, 64], "depths": [1, 1, 1], "kernel": 3, "stem": 2},
    {"family": "cnn", "widths": [48, 48], "depths": [1, 2], "kernel": 3, "stem": 2},
    {"family": "cnn", "widths": [16, 32], "depths": [1, 1], "kernel": 3, "stem": 1},
    {"family": "cnn", "widths": [32, 64, 128], "depths": [1, 1, 1], "kernel": 3, "stem": 1},
]


def measure_all(models: list, profile, shape: tuple[int, ...], label: str) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, m in enumerate(models):
            path = export_for_timing(m, shape, Path(tmp) / "m.onnx")
            out.append(measure_onnx(path, profile, shape).value())
            print(f"  {label} {i + 1}/{len(models)}: {out[-1]:.4f} ms", flush=True)
    return out


def errors(pred: LatencyPredictor, models: list, measured: list[float], shape: tuple[int, ...]) -> np.ndarray:
    p = np.array([pred.predict_ms(m, shape) for m in models])
    y = np.array(measured)
    return (p - y) / y


def row(name: str, err: np.ndarray) -> str:
    a = np.abs(err)
    return (f"| {name} | {len(err)} | {np.median(a):.1%} | {np.percentile(a, 90):.1%} | {a.max():.1%} | "
            f"{np.median(err):+.1%} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="3,32,32")
    ap.add_argument("--n-cal", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--profile", default="host-cpu-1t")
    ap.add_argument("--out", type=Path, default=RESULTS / "calibration_set.md")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    profile = load_profile(args.profile)
    t0 = time.perf_counter()
    old = [m for _, m in sample_candidates(args.n_cal, shape, seed=0)]
    new = [m for _, m in calibration_candidates(args.n_cal, shape, seed=0)]
    shared = sum(1 for a, b in zip(old, new) if repr(a) == repr(b))
    # the new set's first three quarters are the old set's first three quarters: time them once
    cal_old = measure_all(old, quick_timing(profile), shape, "old set")
    cal_new = cal_old[:shared] + measure_all(new[shared:], quick_timing(profile), shape, "new set, small")
    fit_old = LatencyPredictor().fit(old, cal_old, shape, profile)
    fit_new = LatencyPredictor().fit(new, cal_new, shape, profile)
    held_random = [m for _, m in sample_candidates(args.n_test, shape, seed=1,
                                                   exclude=[a for a, _ in sample_candidates(args.n_cal, shape)])]
    held_family = [build_family(a, shape, 10) for a in FAMILY_STUDENTS]
    y_random = measure_all(held_random, profile, shape, "held-out random")
    y_family = measure_all(held_family, profile, shape, "held-out family students")
    lines = [
        "## Calibration set: small networks with a strided stem",
        "",
        f"Command: `python benchmarks/bench_calibration_set.py --shape {args.shape}`",
        "",
        f"Input {shape}, profile `{args.profile}` (ONNX Runtime, 1 thread, p50). Each fit on {args.n_cal} networks "
        f"timed with the calibration's quick timing: *old* `sample_candidates` (random CNNs), *new* "
        f"`calibration_candidates` (the first {shared} of the same, then {args.n_cal - shared} small networks: "
        f"a stride-2 stem, 1-3 blocks, 8-32 channels). Held out, timed with the profile's own timing: "
        f"{args.n_test} random CNNs of another seed, and {len(FAMILY_STUDENTS)} students of the built-in "
        f"`cnn` family as a small budget's search draws them ({min(y_family):.3f}-{max(y_family):.3f} ms). "
        f"Error = (predicted - measured) / measured.",
        "",
        f"Calibration latencies: old {min(cal_old):.3f}-{max(cal_old):.3f} ms, new {min(cal_new):.3f}-"
        f"{max(cal_new):.3f} ms. Fitted constant: old {fit_old.coef['const']:.4f} ms, new "
        f"{fit_new.coef['const']:.4f} ms.",
        "",
        "| fit / held-out set | n | median abs error | p90 | max | median error (bias) |",
        "|---|---:|---:|---:|---:|---:|",
        row("old set / random CNNs", errors(fit_old, held_random, y_random, shape)),
        row("new set / random CNNs", errors(fit_new, held_random, y_random, shape)),
        row("old set / family students", errors(fit_old, held_family, y_family, shape)),
        row("new set / family students", errors(fit_new, held_family, y_family, shape)),
        "",
        f"{cpu_model()}, {platform.machine()}, 2 cores shared; {(time.perf_counter() - t0) / 60:.1f} min.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
