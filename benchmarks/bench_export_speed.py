"""ONNX Runtime vs PyTorch eager: latency of exported sizes at batch 1 on one thread.

Why it matters: the sizes are served from their ONNX files, so the export must be at
least as fast as the PyTorch model it came from; the target is >= 2x at batch 1, where
eager PyTorch's per-op dispatch overhead dominates small models.

Method: a CNN family (3 stride-2 conv-BN-ReLU stages, global pooling, linear head) at
several widths on 1x32x32 inputs, random weights (latency does not depend on them).
Each size is exported with `compressor.export.export_onnx` (parity checked). Both
runtimes use one thread (`torch.set_num_threads(1)`, ORT intra/inter-op 1). Timing
alternates blocks of PyTorch and ORT calls so drift on a shared machine hits both
alike; the median (p50) and p90 of per-call times are reported.

    python benchmarks/bench_export_speed.py            # writes benchmarks/results/export_speed.md
    python benchmarks/bench_export_speed.py --quick    # fewer calls, for a smoke run
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.export import export_onnx  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (8, 16, 32, 64, 128)


def cnn(width: int, in_ch: int = 1, classes: int = 10) -> nn.Module:
    """The benchmark family: widths w, 2w, 4w over three stride-2 stages."""
    layers: list[nn.Module] = []
    c = in_ch
    for mult in (1, 2, 4):
        layers += [nn.Conv2d(c, width * mult, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(width * mult), nn.ReLU()]
        c = width * mult
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)).eval()


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass
class Timing:
    p50_ms: float
    p90_ms: float
    samples: int


def _stats(ns: list[int]) -> Timing:
    ms = sorted(t / 1e6 for t in ns)
    return Timing(p50_ms=statistics.median(ms), p90_ms=ms[min(len(ms) - 1, int(0.9 * len(ms)))], samples=len(ms))


def time_interleaved(calls: dict[str, Callable[[], object]], *, rounds: int = 10, block: int = 50,
                     warmup: int = 30) -> dict[str, Timing]:
    """Per-call times of each callable, alternating blocks of calls between them."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[int]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(block):
                t0 = time.perf_counter_ns()
                fn()
                times[name].append(time.perf_counter_ns() - t0)
    return {k: _stats(v) for k, v in times.items()}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} logical cores visible; Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {ort.__version__}")


def command(argv: Sequence[str]) -> str:
    return " ".join(["python", f"benchmarks/{Path(__file__).name}", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed calls (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "export_speed.md")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds, block = (3, 20) if args.quick else (10, 50)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for width in WIDTHS:
            model = cnn(width)
            x_val = torch.randn(32, 1, 32, 32)
            t0 = time.perf_counter()
            exported = export_onnx(model, x_val, Path(tmp) / f"w{width}.onnx")
            export_s = time.perf_counter() - t0
            session = ort_session(exported.path)
            x = torch.randn(1, 1, 32, 32)
            feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())}

            def eager(model: nn.Module = model, x: torch.Tensor = x) -> object:
                with torch.inference_mode():
                    return model(x)

            def onnx(session: ort.InferenceSession = session, feed: dict = feed) -> object:
                return session.run(None, feed)

            t = time_interleaved({"torch": eager, "ort": onnx}, rounds=rounds, block=block)
            params = sum(p.numel() for p in model.parameters())
            rows.append((width, params, t["torch"], t["ort"], exported.max_abs_diff, export_s))
            print(f"width {width:3d}: torch {t['torch'].p50_ms:.3f} ms, ort {t['ort'].p50_ms:.3f} ms, "
                  f"x{t['torch'].p50_ms / t['ort'].p50_ms:.2f}", flush=True)

    speedups = [r[2].p50_ms / r[3].p50_ms for r in rows]
    geo = float(np.exp(np.mean(np.log(speedups))))
    lines = [
        "## ONNX Runtime vs PyTorch eager (batch 1, one thread)",
        "",
        f"Command: `{command(argv)}`",
        "",
        f"Machine: {machine()}. **Taken on a shared machine** (other jobs were running): treat the "
        "absolute times as indicative; the ratio is more stable because both runtimes were timed in "
        "alternating blocks.",
        "",
        "CNN family (3 stride-2 conv-BN-ReLU stages at widths w, 2w, 4w; pooling; linear head) on "
        f"1x32x32 inputs; {rounds * block} timed calls per runtime and size after 30 warm-up calls.",
        "",
        "| width w | params | PyTorch eager p50 (p90) | ONNX Runtime p50 (p90) | speed-up (p50) | "
        "ONNX parity max abs diff | export time |",
        "|---|---|---|---|---|---|---|",
    ]
    for (width, params, tt, to, diff, export_s), s in zip(rows, speedups):
        lines.append(f"| {width} | {params:,} | {tt.p50_ms:.3f} ms ({tt.p90_ms:.3f}) | "
                     f"{to.p50_ms:.3f} ms ({to.p90_ms:.3f}) | {s:.2f}x | {diff:.1e} | {export_s:.1f} s |")
    verdict = "met" if min(speedups) >= 2 else "NOT met for every size"
    lines += ["", f"Geometric-mean speed-up {geo:.2f}x (min {min(speedups):.2f}x, max {max(speedups):.2f}x); "
                  f"target >= 2x: {verdict}. The first export time includes the exporter's one-off start-up.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
