"""BatchNorm recalibration for extracted widths.

Nested widths share one set of BatchNorm layers, but a narrower network feeds
each BN different statistics (fewer input channels to every conv), so the
running mean/variance learnt at full width are wrong for every other width
(Yu & Huang 2019, universally slimmable networks: recalibrating on about 2,000
samples recovers most of the gap). We recompute them per width: reset, switch to
a cumulative average (momentum=None, so every batch counts equally and the
result does not depend on a decay rate), and forward a few hundred training
samples in train mode without gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["batchnorms", "recalibrate_bn"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of `model` on samples `x`, in place.

    Batches are of equal size (the remainder is dropped unless it is all there is),
    so the cumulative average weighs every sample equally."""
    layers = batchnorms(model)
    if not layers or len(x) == 0:
        return model
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        n = len(x) if len(x) < batch_size else len(x) - len(x) % batch_size
        for i in range(0, n, batch_size):
            model(x[i:i + batch_size])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model
