"""Random candidate networks for calibrating the latency predictor (and benchmarking it).

The predictor is only as good as the spread of models it was fitted on, so the
sample varies everything a search varies: depth (2-10 blocks), widths (8-128
channels, rounded), stride placement, and the block family — plain conv-bn-relu,
residual basic blocks, and depthwise-separable blocks, whose per-FLOP cost on a
CPU is several times a dense convolution's. An architecture is a JSON-able dict,
so a calibration set can be written down and rebuilt exactly.

A calibration set (`calibration_candidates`) adds a quarter of small networks with a
stride-2 stem, as the built-in student families' smallest members are: the random ones
above all run their first blocks at full resolution and take 0.04-0.09 ms at 32x32 at
least, and a fit that never saw a network under that put a 0.032 ms constant on every
prediction: a SqueezeNet's from-scratch students (0.015 ms) were predicted at 2.4x.
On images of 32 pixels a side or more, half of those small networks have a stride-4
patchify stem instead (kernel 4, stride 4), as the CNN family's cheapest students do:
they run in about 10 us, under the stride-2 networks' 35 us, and a fit that had not seen
them predicted them at 2.8-4.4x their measured latency.
"""
from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from torch import nn

from .profiles import round_channels

__all__ = ["FAMILIES", "build_candidate", "calibration_candidates", "sample_arch", "sample_candidates"]

FAMILIES = ("plain", "residual", "separable")


def sample_arch(rng: random.Random, *, family: str | None = None, min_depth: int = 2, max_depth: int = 10,
                min_width: int = 8, max_width: int = 128, multiple: int = 8,
                max_downsamples: int = 3, stem_stride: int = 1) -> dict[str, Any]:
    """One random architecture: per block a width and a stride (the first block's: `stem_stride`).

    Widths grow stage by stage as in hand-designed CNNs; each stage's base width
    is drawn from a range that doubles per stage, so both narrow-deep and
    wide-shallow networks appear.
    """
    family = family or rng.choice(FAMILIES)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)} but got {family!r}.")
    depth = rng.randint(min_depth, max_depth)
    n_stages = min(depth, rng.randint(1, max_downsamples + 1))
    # split `depth` blocks into `n_stages` non-empty stages
    cuts = sorted(rng.sample(range(1, depth), n_stages - 1)) if n_stages > 1 else []
    bounds = [0, *cuts, depth]
    blocks: list[list[int]] = []
    for s in range(n_stages):
        lo = min(max_width, min_width * 2 ** s)
        hi = min(max_width, max(lo, max_width // 2 ** (n_stages - 1 - s)))
        for b in range(bounds[s], bounds[s + 1]):
            width = round_channels(rng.uniform(lo, hi), multiple)
            stride = 2 if (b == bounds[s] and s > 0) else (stem_stride if b == 0 else 1)
            blocks.append([min(width, max_width), stride])
    return {"family": family, "kernel": 3, "blocks": blocks}


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _bn(dims: int) -> type[nn.Module]:
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int, dims: int, groups: int = 1) -> list[nn.Module]:
    return [_conv(dims)(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            _bn(dims)(cout), nn.ReLU(inplace=True)]


class _Residual(nn.Module):
    """A ResNet basic block: two k x k convolutions and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, dims: int) -> None:
        super().__init__()
        conv, bn = _conv(dims), _bn(dims)
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, k, stride, dims),
                                  conv(cout, cout, k, padding=k // 2, bias=False), bn(cout))
        self.shortcut: nn.Module = nn.Identity() if (cin == cout and stride == 1) else nn.Sequential(
            conv(cin, cout, 1, stride=stride, bias=False), bn(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Any) -> Any:
        return self.act(self.body(x) + self.shortcut(x))


def build_candidate(arch: Mapping[str, Any], input_shape: Sequence[int], num_classes: int = 10) -> nn.Module:
    """The network `arch` describes, for inputs of per-sample shape (C, H, W) (2-D
    convolutions), (C, L) (1-D) or (L,) (1-D over one channel)."""
    shape = tuple(int(d) for d in input_shape)
    if not 1 <= len(shape) <= 3:
        raise ValueError(f"input_shape must be (L,), (C, L) or (C, H, W) but got {shape}.")
    dims = 2 if len(shape) == 3 else 1
    k, family = int(arch["kernel"]), arch["family"]
    layers: list[nn.Module] = [nn.Unflatten(1, (1, shape[0]))] if len(shape) == 1 else []
    cin = 1 if len(shape) == 1 else shape[0]
    for i, (width, stride) in enumerate(arch["blocks"]):
        if i == 0 and stride == 4:  # a patchify stem in every family: non-overlapping 4x4 patches
            layers += [_conv(dims)(cin, width, 4, stride=4, bias=False), _bn(dims)(width), nn.ReLU(inplace=True)]
        elif family == "plain" or (family == "separable" and i == 0):
            layers += _conv_bn_relu(cin, width, k, stride, dims)  # a separable stem is a dense conv
        elif family == "residual":
            layers.append(_Residual(cin, width, k, stride, dims))
        else:  # MobileNet-v1 block: depthwise k x k, then pointwise 1 x 1
            layers += _conv_bn_relu(cin, cin, k, stride, dims, groups=cin) + _conv_bn_relu(cin, width, 1, 1, dims)
        cin = width
    pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
    layers += [pool, nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers).eval()


def sample_candidates(n: int, input_shape: Sequence[int] = (1, 32, 32), num_classes: int = 10, seed: int = 0,
                      exclude: Sequence[Mapping[str, Any]] = (), **arch_kwargs: Any
                      ) -> list[tuple[dict[str, Any], nn.Module]]:
    """`n` distinct random (arch, module) pairs, none equal to an arch in `exclude`
    (so a held-out set can be kept disjoint from a calibration set)."""
    rng = random.Random(seed)
    seen = {repr(dict(a)) for a in exclude}
    out: list[tuple[dict[str, Any], nn.Module]] = []
    for _ in range(100 * n + 100):
        if len(out) == n:
            break
        arch = sample_arch(rng, **arch_kwargs)
        key = repr(arch)
        if key in seen:
            continue
        seen.add(key)
        out.append((arch, build_candidate(arch, input_shape, num_classes)))
    if len(out) < n:
        raise ValueError(f"could only find {len(out)} distinct architectures of the {n} asked for.")
    return out


# the small networks of a calibration set: like the built-in families' smallest students
_SMALL = {"min_depth": 1, "max_depth": 3, "max_width": 32, "max_downsamples": 1, "stem_stride": 2}


def calibration_candidates(n: int, input_shape: Sequence[int] = (1, 32, 32), num_classes: int = 10,
                           seed: int = 0) -> list[tuple[dict[str, Any], nn.Module]]:
    """The networks a latency calibration times: `n` - `n` // 4 random ones (`sample_candidates`)
    and `n` // 4 small ones with a strided stem: stride 2, and on images of 32 pixels a side or
    more half of them stride 4 (see the module's docstring)."""
    small = n // 4
    patchify = small // 2 if len(input_shape) == 3 and min(input_shape[1:]) >= 32 else 0
    big = sample_candidates(n - small, input_shape, num_classes, seed=seed)
    strided = sample_candidates(small - patchify, input_shape, num_classes, seed=seed + 7919,
                                exclude=[a for a, _ in big], **_SMALL)
    patches = sample_candidates(patchify, input_shape, num_classes, seed=seed + 7927,
                                **{**_SMALL, "stem_stride": 4}) if patchify else []
    return big + strided + patches
