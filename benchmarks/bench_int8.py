"""INT8 (ONNX Runtime static QDQ) vs fp32 per size: latency ratio and accuracy drop.

Accuracy must be real for the drop to mean anything, so the CNN family from
`bench_export_speed.py` is trained for a few epochs on scikit-learn's 8x8 digits
upsampled to 32x32 (1437 train / 360 validation images, seeded split). Each size is
exported to fp32 ONNX, quantized with `compressor.export.quantize_int8` (calibrated on
256 training images), and both files are evaluated on the validation images and timed
at batch 1 on one thread, in alternating blocks.

    python benchmarks/bench_int8.py            # writes benchmarks/results/int8.md
    python benchmarks/bench_int8.py --quick    # two epochs, fewer timed calls
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_speed import ROOT, cnn, command, machine, ort_session, time_interleaved  # noqa: E402

from compressor.export import export_onnx, onnx_predict, quantize_int8  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (16, 32, 64)


def digits_32(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1], bilinearly upsampled 8x8 -> 32x32, split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(x))
    tr, va = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[va], y[va]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs and fewer timed calls (smoke run)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "int8.md")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    epochs = 2 if args.quick else args.epochs
    rounds, block = (3, 20) if args.quick else (10, 50)

    torch.set_num_threads(1)  # training too: the machine is shared, and timings must not see a busy pool
    x_tr, y_tr, x_va, y_va = digits_32()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for width in WIDTHS:
            torch.manual_seed(width)
            t0 = time.perf_counter()
            model = train(cnn(width), x_tr, y_tr, epochs)
            train_s = time.perf_counter() - t0
            fp32 = export_onnx(model, x_va[:64], Path(tmp) / f"w{width}.onnx").path
            int8 = quantize_int8(fp32, x_tr[:256], Path(tmp) / f"w{width}.int8.onnx")

            logits32, logits8 = onnx_predict(fp32, x_va), onnx_predict(int8, x_va)
            acc32 = float((logits32.argmax(1) == y_va.numpy()).mean())
            acc8 = float((logits8.argmax(1) == y_va.numpy()).mean())
            agree = float((logits32.argmax(1) == logits8.argmax(1)).mean())

            s32, s8 = ort_session(fp32), ort_session(int8)
            feed = {s32.get_inputs()[0].name: np.ascontiguousarray(x_va[:1].numpy())}
            t = time_interleaved({"fp32": lambda s=s32, f=feed: s.run(None, f),
                                  "int8": lambda s=s8, f=feed: s.run(None, f)}, rounds=rounds, block=block)
            sizes = (fp32.stat().st_size, int8.stat().st_size)
            rows.append((width, acc32, acc8, agree, t["fp32"], t["int8"], sizes, train_s))
            print(f"width {width:3d}: acc {acc32:.3f} -> {acc8:.3f}, {t['fp32'].p50_ms:.3f} -> "
                  f"{t['int8'].p50_ms:.3f} ms", flush=True)

    lines = [
        "## INT8 vs fp32 (ONNX Runtime static QDQ, per-channel S8S8)",
        "",
        f"Command: `{command(argv).replace('bench_export_speed', 'bench_int8')}`",
        "",
        f"Machine: {machine()}. **Taken on a shared machine** (other jobs were running): treat absolute "
        "times as indicative; fp32 and INT8 were timed in alternating blocks, so their ratio is fairer.",
        "",
        f"Data: scikit-learn digits upsampled to 32x32, {len(x_tr)} train / {len(x_va)} validation images. "
        f"Each size trained {epochs} epoch(s) (AdamW, lr 3e-3), calibrated on 256 training images. Latency: "
        f"batch 1, one thread, {rounds * block} timed calls per file.",
        "",
        "| width w | fp32 acc | INT8 acc | drop (points) | top-1 agreement | fp32 p50 (p90) | INT8 p50 (p90) | "
        "fp32/INT8 latency | file size fp32 / INT8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for width, acc32, acc8, agree, t32, t8, (b32, b8), _ in rows:
        lines.append(
            f"| {width} | {100 * acc32:.1f}% | {100 * acc8:.1f}% | {100 * (acc32 - acc8):+.1f} | {100 * agree:.1f}% | "
            f"{t32.p50_ms:.3f} ms ({t32.p90_ms:.3f}) | {t8.p50_ms:.3f} ms ({t8.p90_ms:.3f}) | "
            f"{t32.p50_ms / t8.p50_ms:.2f}x | {b32 / 1024:.0f} KiB / {b8 / 1024:.0f} KiB |")
    lines += ["", "A ratio above 1x means INT8 is faster. INT8 is reported beside fp32 and never replaces it: "
                  "the picker serves fp32 files.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
