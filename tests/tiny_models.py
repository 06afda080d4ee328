"""Small networks used as teachers in tests (importable for --arch)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TinyResidual(nn.Module):
    """Residual + concat + depthwise: the coupling cases pruning must respect."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, 16, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.b1(self.c1(x)))
        b = F.relu(self.b2(self.dw(a)) + a)
        c = torch.cat([b, self.c3(b)], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(c, 1), 1))


def make_tiny() -> nn.Module:
    return TinyResidual()


def make_wrong() -> nn.Module:
    return nn.Linear(3, 3)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def lifted_teacher():
    """TinyResidual (random BatchNorm statistics) exported with a dynamic batch and lifted, as the
    pipeline holds a prunable teacher: a `Teacher` of 1x8x8 inputs and 10 classes."""
    from compressor.intake.lift import lift_exported
    from compressor.types import InputSpec, Teacher

    torch.manual_seed(0)
    model = randomise_bn(TinyResidual()).eval()
    ep = torch.export.export(model, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    return Teacher(lift_exported(ep.module())[0], InputSpec((1, 8, 8), 10), "test", "module", "sha")
