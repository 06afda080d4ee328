"""How well does the host-fitted latency predictor predict models it has not seen?

Calibrates `LatencyPredictor` on N random candidate CNNs (plain, residual and
depthwise-separable; depth 2-10; widths 8-128 in multiples of 8; 1x32x32 input,
10 classes), then measures M *different* candidates on the same profile and
compares prediction with measurement. Reports the median absolute percentage
error (target <= 10 %, aim <= 5 %), its 90th percentile and maximum, per family,
and two baselines fitted the same way on the same calibration set: FLOPs alone
(a * FLOPs + b) and the lead's four features (FLOPs, bytes, layers, constant).

    python benchmarks/bench_latency_predictor.py [--n-cal 40] [--n-test 40] [--profile host-cpu-1t]

Writes benchmarks/results/latency_predictor.md (section "Latency prediction (host CPU)").
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

from compressor.hardware import (  # noqa: E402
    LatencyPredictor,
    cpu_model,
    layer_costs,
    load_profile,
    measure_onnx,
    quick_timing,
    sample_candidates,
)
from compressor.hardware._onnx import export_for_timing  # noqa: E402
from compressor.hardware.backends import cpu_channel_block  # noqa: E402
from compressor.hardware.predict import _nnls_relative  # noqa: E402

SHAPE = (1, 32, 32)


def measure_all(models: list, profile, label: str, seconds: list[float] | None = None) -> list[float]:
    """Each model's latency; `seconds` receives what exporting and timing each one took."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, m in enumerate(models):
            t = time.perf_counter()
            path = export_for_timing(m, SHAPE, Path(tmp) / "m.onnx")
            out.append(measure_onnx(path, profile, SHAPE).value())
            if seconds is not None:
                seconds.append(time.perf_counter() - t)
            print(f"  {label} {i + 1}/{len(models)}: {out[-1]:.4f} ms", flush=True)
    return out


def baseline_features(costs: list, which: str) -> np.ndarray:
    flops = sum(c.flops for c in costs) / 1e6
    if which == "flops":
        return np.array([flops, 1.0])
    kernels = [c for c in costs if c.is_kernel]
    return np.array([flops, sum(c.bytes for c in kernels) / 1e6, float(len(kernels)), 1.0])


def ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y


def summary(errors: np.ndarray) -> str:
    return (f"{np.median(errors):.1%} | {np.percentile(errors, 90):.1%} | {errors.max():.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-cal", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--profile", default="host-cpu-1t")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency_predictor.md")
    ap.add_argument("--subsets", default="12,20",
                    help="also fit on the first N calibration models (light timing) for each N listed")
    ap.add_argument("--note", default="taken on a SHARED machine (other jobs on the same 2 cores): noisy")
    args = ap.parse_args()
    command = " ".join(["python", "benchmarks/bench_latency_predictor.py", *sys.argv[1:]])

    profile = load_profile(args.profile)
    t0 = time.time()
    cal = sample_candidates(args.n_cal, SHAPE, seed=args.seed)
    test = sample_candidates(args.n_test, SHAPE, seed=args.seed + 1, exclude=[a for a, _ in cal])
    assert not {repr(a) for a, _ in cal} & {repr(a) for a, _ in test}, "sets must be disjoint"

    print(f"calibrating on {len(cal)} candidates ...", flush=True)
    t_full = time.perf_counter()
    y_cal = np.array(measure_all([m for _, m in cal], profile, "calibration"))
    t_full = time.perf_counter() - t_full
    predictor = LatencyPredictor().fit([m for _, m in cal], list(y_cal), SHAPE, profile)
    # the same models timed as `compress` times a calibration (hardware.quick_timing: ~20 runs each)
    light = quick_timing(profile)
    t_light = time.perf_counter()
    per_model: list[float] = []
    y_light = np.array(measure_all([m for _, m in cal], light, "calibration, light timing", per_model))
    t_light = time.perf_counter() - t_light
    light_predictor = LatencyPredictor().fit([m for _, m in cal], list(y_light), SHAPE, profile)
    print(f"measuring {len(test)} held-out candidates ...", flush=True)
    y = np.array(measure_all([m for _, m in test], profile, "held-out"))
    pred = np.array([predictor.predict_ms(m, SHAPE) for _, m in test])
    err = ape(pred, y)

    rows = {"fitted cost model (ours), profile's timing": err,
            "fitted cost model, light calibration timing (what `compress` does)":
                ape(np.array([light_predictor.predict_ms(m, SHAPE) for _, m in test]), y)}
    for n in sorted({int(v) for v in args.subsets.split(",") if v.strip()}):
        if n < len(cal):  # sample_candidates(n) is the first n of sample_candidates(N): the set a run of n times
            sub = LatencyPredictor().fit([m for _, m in cal[:n]], list(y_light[:n]), SHAPE, profile)
            rows[f"fitted cost model, light timing, first {n} models only ({sum(per_model[:n]):.1f} s to time)"] = \
                ape(np.array([sub.predict_ms(m, SHAPE) for _, m in test]), y)
    cal_costs = [layer_costs(m, SHAPE) for _, m in cal]
    test_costs = [layer_costs(m, SHAPE) for _, m in test]
    for which, label in (("flops", "baseline: FLOPs + const"), ("four", "baseline: FLOPs, bytes, layers, const")):
        Xc = np.stack([baseline_features(c, which) for c in cal_costs])
        Xt = np.stack([baseline_features(c, which) for c in test_costs])
        rows[label] = ape(Xt @ _nnls_relative(Xc, y_cal), y)

    families = sorted({a["family"] for a, _ in test})
    lines = [
        "## Latency prediction (host CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"- {args.note}.",
        f"- Profile `{profile.name}` ({profile.backend}, {profile.threads or 'all'} thread(s), batch "
        f"{profile.batch_size}, {profile.precision}, statistic {profile.stat}); CPU `{cpu_model()}`, "
        f"MLAS channel block {cpu_channel_block()}; Python {platform.python_version()}.",
        f"- Calibration: {len(cal)} random candidates (seed {args.seed}); held out: {len(test)} other "
        f"candidates (seed {args.seed + 1}, disjoint). Families plain / residual / depthwise-separable, depth "
        f"2-10 blocks, widths 8-128 (multiples of 8), input 1x32x32, 10 classes.",
        f"- Held-out latencies span {y.min():.3f}-{y.max():.3f} ms; calibration {y_cal.min():.3f}-"
        f"{y_cal.max():.3f} ms. Wall time {time.time() - t0:.0f} s.",
        f"- Timing the calibration set (export + measurement of {len(cal)} models): {t_full:.1f} s with the "
        f"profile's own setting ({profile.warmup_seconds} s warm-up, >= {profile.repeats} runs and "
        f">= {profile.min_seconds} s per model), {t_light:.1f} s with the light calibration timing "
        f"({light.warmup_seconds} s warm-up, >= {light.repeats} runs, >= {light.min_seconds} s): "
        f"{t_light / t_full:.2f}x. Held-out models are always timed with the profile's own setting.",
        "",
        "| predictor | median APE | 90th pct APE | max APE |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {summary(e)} |" for label, e in rows.items()],
        "",
        "Per family (fitted cost model):",
        "",
        "| family | models | median APE |",
        "|---|---:|---:|",
        *[f"| {fam} | {sum(a['family'] == fam for a, _ in test)} | "
          f"{np.median(err[[a['family'] == fam for a, _ in test]]):.1%} |" for fam in families],
        "",
        "Fitted coefficients (ms per unit): "
        + ", ".join(f"{k} {v:.3g}" for k, v in (predictor.coef or {}).items()),
        "",
        f"Target: median APE <= 10 % (aim <= 5 %): "
        f"**{'met' if np.median(err) <= 0.10 else 'NOT met'}** ({np.median(err):.1%}; with the light "
        f"calibration timing {np.median(rows[list(rows)[1]]):.1%}).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
