#!/usr/bin/env python3
"""Classify raw samples with this folder's model.onnx: onnxruntime and numpy only.

    python serve.py sample.npy [more.npy | image.png ...]      # one JSON line per sample

A `.npy` file holds one raw sample (or a batch of them, first axis) as `preprocess.json`
describes under "input"; image files need Pillow. The steps in `preprocess.json` are the
run's own data pipeline, so the model sees what it saw in training:

    scale      x * factor
    resize     bilinear, half-pixel centres, no antialiasing (torch's F.interpolate, align_corners=False)
    image      open with Pillow, convert to `mode`, resize to `size` with Pillow's default filter
    normalize  (x - mean) / std
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes, as torch's F.interpolate(align_corners=False)."""
    def weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    (h0, h1, wh), (w0, w1, ww) = weights(x.shape[-2], size[0]), weights(x.shape[-1], size[1])
    rows = x[..., h0, :] * (1 - wh)[:, None] + x[..., h1, :] * wh[:, None]
    return (rows[..., w0] * (1 - ww) + rows[..., w1] * ww).astype(np.float32)


def load_sample(path: Path, steps: list[dict]) -> np.ndarray:
    """One file as a float32 batch, before the array steps."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    from PIL import Image  # only image inputs need it

    step = next((s for s in steps if s["op"] == "image"), None)
    if step is None:
        raise SystemExit(f"serve.py: {path} is an image, but this model takes arrays (.npy)")
    img = Image.open(path).convert(step["mode"]).resize(tuple(step["size"]))
    arr = np.asarray(img, dtype=np.float32)
    return arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]


def preprocess(x: np.ndarray, steps: list[dict], input_rank: int) -> np.ndarray:
    for step in steps:
        if step["op"] == "scale":
            x = x * np.float32(step["factor"])
        elif step["op"] == "resize":
            x = resize_bilinear(x, tuple(step["size"]))
        elif step["op"] == "normalize":
            x = (x - np.float32(step["mean"])) / np.float32(step["std"])
        elif step["op"] != "image":  # "image" was applied when the file was read
            raise SystemExit(f"serve.py: unknown preprocessing step {step['op']!r}")
    while x.ndim < input_rank:  # samples stored without their channel axis
        x = x[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    prep = json.loads((HERE / "preprocess.json").read_text())
    classes = json.loads((HERE / "classes.json").read_text())
    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    for name in argv:
        raw = load_sample(Path(name), prep["steps"])
        if raw.ndim == len(prep["input"].get("shape", raw.shape[1:])):  # one sample, no batch axis
            raw = raw[None]
        x = preprocess(raw, prep["steps"], len(inp.shape))
        logits = session.run(None, {inp.name: x})[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        for i, row in enumerate(logits):
            k = int(row.argmax())
            print(json.dumps({"file": name, "index": i, "class": classes[k], "class_index": k,
                              "probability": round(float(probs[i, k]), 6),
                              "logits": [round(float(v), 6) for v in row]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
