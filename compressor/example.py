"""The built-in example: a residual CNN teacher trained on digits (32x32), saved as TorchScript.

About 0.5M parameters and 80M multiply-accumulates per image: large enough
that compression has real latency to win on a CPU, small enough to train in
about a minute on two cores.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .distill.precision import guarded_step, resolve_precision, training_autocast
from .distill.single import KDConfig
from .evaluate import accuracy, predict_logits
from .files import torch_bytes, write_bytes
from .intake.data import load_data
from .progress import Progress


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ExampleCNN(nn.Module):
    """A small ResNet: stem 40, stages 40/80/160 (stride 1/2/2), global pooling, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (40, 80, 160)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))


def train_example_teacher(out: Path, *, seed: int = 0, epochs: int = 8, image_size: int = 32,
                          widths: tuple[int, ...] = (40, 80, 160), progress: Progress | None = None,
                          precision: str = "auto") -> dict:
    """Train ExampleCNN on digits and save it with `torch.jit.save`. Returns a summary.
    `precision`: the training steps' forward passes, as in distillation (distill/precision.py:
    "auto" is bfloat16 on a CPU with AMX or AVX-512 BF16, float32 elsewhere); the saved model is float32."""
    torch.manual_seed(seed)
    data = load_data("digits", seed=seed, image_size=image_size)
    model = ExampleCNN(data.x_train.shape[1], data.num_classes, widths)
    cfg = KDConfig(epochs=epochs, lr=3e-3, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(data.x_train) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    # channels-last, as nested distillation trains: oneDNN's convolutions run this CNN's steps faster in
    # NHWC on the CPU; the saved model is converted back, so what it computes is unchanged
    layout = torch.channels_last if data.x_train.dim() == 4 else torch.contiguous_format
    model.to(memory_format=layout)
    precision, _ = resolve_precision(precision, "cpu", [(model, data.x_train[:2])])
    start = time.perf_counter()
    task = progress.add("train example teacher", total=epochs * steps_per_epoch) if progress else None
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(data.x_train), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = data.x_train[idx]
            # small random shifts: a teacher that generalises, not one that memorises 1.4k images
            x = torch.roll(x, shifts=tuple(torch.randint(-2, 3, (2,), generator=g).tolist()), dims=(2, 3))
            with training_autocast(precision):
                logits = model(x.contiguous(memory_format=layout)).float()
            loss = F.cross_entropy(logits, data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            precision = guarded_step(opt, precision, "example teacher")
            sched.step()
            if progress:
                progress.advance(task)
    model.eval().to(memory_format=torch.contiguous_format)
    acc = accuracy(predict_logits(model, data.x_val), data.y_val)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        scripted = torch.jit.trace(model, data.x_val[:2])
    write_bytes(out, torch_bytes(torch.jit.save, scripted))
    return {"path": str(out), "val_accuracy": acc, "params": sum(p.numel() for p in model.parameters()),
            "seconds": time.perf_counter() - start, "image_size": image_size, "precision": precision}
