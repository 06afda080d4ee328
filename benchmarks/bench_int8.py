"""INT8 (ONNX Runtime static QDQ) vs fp32 per size: agreement, accuracy drop, latency.

INT8 accuracy depends on the CPU that runs it (x86 without VNNI saturates u8*s8
products), so each size is quantized twice: with the settings `int8_settings_for`
picks for this host's CPU class (what `quantize_int8` does by default) and with the
previous fixed setting (full-range S8S8, every layer int8), side by side. Only the
host's class is measured; the table names it.

Accuracy must be real for the drop to mean anything, so the CNN family from
`bench_export_speed.py` is trained for a few epochs on scikit-learn's 8x8 digits
upsampled to 32x32 (1437 train / 360 validation images, seeded split). Each size is
exported to fp32 ONNX, quantized with `compressor.export.quantize_int8` (calibrated on
256 training images), and the three files are evaluated on the validation images and
timed at batch 1 on one thread, in alternating blocks.

    python benchmarks/bench_int8.py            # writes benchmarks/results/int8.md
    python benchmarks/bench_int8.py --quick    # two epochs, fewer timed calls
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_speed import ROOT, cnn, command, machine, ort_session, time_interleaved  # noqa: E402

from compressor.export import Int8Settings, export_onnx, int8_settings_for, onnx_predict, quantize_int8  # noqa: E402
from compressor.hardware.isa import host_cpu_features  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (16, 32, 64)


def old_settings(cpu_class: str) -> Int8Settings:
    """The setting used before INT8 was chosen per CPU: ORT's QDQ default, on every layer."""
    return Int8Settings(activation_type="qint8", weight_type="qint8", per_channel=True, reduce_range=False,
                        calibration="minmax", fp32_first_last=False, cpu_class=cpu_class,
                        reason="The previous fixed setting, kept for comparison.")


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


TITLE = "## INT8 vs fp32 (ONNX Runtime static QDQ), settings chosen per CPU class"
CLASS_HEADING = "### CPU class "
INTRO = (
    "INT8 settings depend on the CPU that runs the model (`compressor.export.int8_settings_for`), so each "
    "CPU class has its own subsection, measured on a CPU of that class. A run replaces only its own host's "
    "subsection and keeps the others, so figures from other machines survive a re-run here."
)


def merge_results(path: Path, cpu_class: str, section: str) -> str:
    """The results file with `section` as this class's subsection and every other subsection kept.

    One machine can measure only its own class; figures taken on other classes (or
    before classes were recorded) are kept, each under its own "### " heading.
    """
    blocks: list[list[str]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("### "):
                blocks.append([line])
            elif blocks:
                blocks[-1].append(line)
    own = f"{CLASS_HEADING}`{cpu_class}`"
    others = ["\n".join(block).strip() for block in blocks if block[0].strip() != own]
    return "\n\n".join([TITLE, INTRO, section.strip(), *others]) + "\n"


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
    cpu = host_cpu_features()
    chosen, old = int8_settings_for(cpu.cpu_class), old_settings(cpu.cpu_class)
    print(f"host CPU class {cpu.cpu_class}: {chosen.label}", flush=True)
    x_tr, y_tr, x_va, y_va = digits_32()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for width in WIDTHS:
            torch.manual_seed(width)
            model = train(cnn(width), x_tr, y_tr, epochs)
            files = {"fp32": export_onnx(model, x_va[:64], Path(tmp) / f"w{width}.onnx").path}
            for name, settings in (("host", chosen), ("old", old)):
                files[name] = quantize_int8(files["fp32"], x_tr[:256], Path(tmp) / f"w{width}.{name}.onnx",
                                            settings=settings)
            top1 = {k: onnx_predict(f, x_va).argmax(1) for k, f in files.items()}
            acc = {k: float((p == y_va.numpy()).mean()) for k, p in top1.items()}
            agree = {k: float((top1["fp32"] == top1[k]).mean()) for k in ("host", "old")}

            sessions = {k: ort_session(f) for k, f in files.items()}
            feed = {sessions["fp32"].get_inputs()[0].name: np.ascontiguousarray(x_va[:1].numpy())}
            t = time_interleaved({k: (lambda s=s, f=feed: s.run(None, f)) for k, s in sessions.items()},
                                 rounds=rounds, block=block)
            kib = {k: f.stat().st_size / 1024 for k, f in files.items()}
            rows.append((width, acc, agree, t, kib))
            print(f"width {width:3d}: fp32 acc {acc['fp32']:.3f}; host-chosen acc {acc['host']:.3f} agree "
                  f"{agree['host']:.3f}; old S8S8 acc {acc['old']:.3f} agree {agree['old']:.3f}; p50 "
                  f"{t['fp32'].p50_ms:.3f} / {t['host'].p50_ms:.3f} / {t['old'].p50_ms:.3f} ms", flush=True)

    features = (("AVX2", cpu.avx2), ("AVX-512", cpu.avx512), ("VNNI", cpu.vnni), ("ARM dot-product", cpu.asimddp))
    flags = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in features)
    lines = [
        f"{CLASS_HEADING}`{cpu.cpu_class}`",
        "",
        f"Command: `{command(argv).replace('bench_export_speed', 'bench_int8')}`",
        "",
        f"Machine: {machine()}. **Taken on a shared machine** (other jobs were running): treat absolute "
        "times as indicative; fp32 and both INT8 files were timed in alternating blocks, so their ratios are fairer.",
        "",
        f"**Host CPU class: `{cpu.cpu_class}`** ({flags}). Only this class was measured by this run; the "
        "other classes get other settings, and their figures must be taken on such a CPU.",
        "",
        f"- host-chosen: {chosen.label}. Why: {chosen.reason}",
        f"- old: {old.label} (the fixed setting before INT8 was chosen per CPU).",
        "",
        f"Data: scikit-learn digits upsampled to 32x32, {len(x_tr)} train / {len(x_va)} validation images. "
        f"Each size trained {epochs} epoch(s) (AdamW, lr 3e-3), calibrated on 256 training images. Latency: "
        f"batch 1, one thread, {rounds * block} timed calls per file. Drop = fp32 accuracy - INT8 accuracy; "
        "agreement = share of validation images where INT8 and fp32 predict the same class.",
        "",
        "| width w | fp32 acc | host-chosen INT8 acc | drop (points) | top-1 agreement | old S8S8 INT8 acc | "
        "drop (points) | top-1 agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for width, acc, agree, _, _ in rows:
        lines.append(
            f"| {width} | {100 * acc['fp32']:.1f}% | {100 * acc['host']:.1f}% | "
            f"{100 * (acc['fp32'] - acc['host']):+.1f} | **{100 * agree['host']:.1f}%** | {100 * acc['old']:.1f}% | "
            f"{100 * (acc['fp32'] - acc['old']):+.1f} | {100 * agree['old']:.1f}% |")
    lines += [
        "",
        "| width w | fp32 p50 (p90) | host-chosen INT8 p50 (p90) | old S8S8 INT8 p50 (p90) | "
        "fp32 / host-chosen latency | fp32 / old latency | file size fp32 / host-chosen / old |",
        "|---|---|---|---|---|---|---|",
    ]
    for width, _, _, t, kib in rows:
        lines.append(
            f"| {width} | {t['fp32'].p50_ms:.3f} ms ({t['fp32'].p90_ms:.3f}) | "
            f"{t['host'].p50_ms:.3f} ms ({t['host'].p90_ms:.3f}) | {t['old'].p50_ms:.3f} ms ({t['old'].p90_ms:.3f}) | "
            f"{t['fp32'].p50_ms / t['host'].p50_ms:.2f}x | {t['fp32'].p50_ms / t['old'].p50_ms:.2f}x | "
            f"{kib['fp32']:.0f} / {kib['host']:.0f} / {kib['old']:.0f} KiB |")
    lines += ["", "A ratio above 1x means INT8 is faster. INT8 is reported beside fp32 and never replaces it: "
                  "the picker serves fp32 files."]
    if chosen.weight_type == "quint8":
        lines += ["", "Where the host-chosen file is slower than the old one, that is the price of the saturation-free "
                      "U8U8 kernels (they widen to 16 bits before multiplying); the old file's speed comes with the "
                      "agreement loss in the first table."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(merge_results(args.out, cpu.cpu_class, "\n".join(lines)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
