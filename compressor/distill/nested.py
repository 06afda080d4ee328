"""A nested family: one TA whose importance-ordered channel prefixes are the servable sizes.

Each size keeps the first k channels of every coupled group (prune.ChannelGroup)
in importance order (Matryoshka / MatFormer prefixes), so all sizes share one
set of weights. Two ways to run a size, equal to ~1e-6:

- *masked* (`set_width`): prune.ChannelMasker zeroes the channels outside the
  prefixes on the TA itself. Simple, but a width-0.25 pass still costs the TA's
  full MACs.
- *sliced* (`SubNet`): the dense sub-network Torch-Pruning would cut
  (prune.materialize), run with `torch.func.functional_call` on tensors
  gathered from the TA (`index_select` of the kept channels). Gradients flow
  back into the TA's parameters through the gather, and a width-r pass costs
  about r² of the TA's MACs (measured on the digits CNN: 0.69 vs 2.57 MMACs at
  r = 0.5, 3.2 vs 7.3 ms per batch of 64). Training uses this path.

Which indices a size keeps is read off Torch-Pruning itself rather than
re-derived: every tensor of a copy of the TA is filled with its own index along
one dimension, the copy is materialised, and the surviving values are the kept
indices. This stays right for whatever coupling Torch-Pruning handles
(residual adds, concatenation offsets, depthwise convs, whole attention heads).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import prune as P
from ..errors import ConfigError
from .bn import recalibrate_bn

__all__ = ["Ratio", "SizeSpec", "SubNet", "NestedFamily", "size_name", "choose_sizes"]

log = logging.getLogger(__name__)

Ratio = P.Ratios  # a uniform width, or {group key: width}
SizeSpec = tuple[str, Ratio]  # ("w050", 0.5)


def size_name(ratio: Ratio) -> str:
    """'w050' for a uniform width of 0.5; 'm042' for a per-group width averaging 0.42."""
    if isinstance(ratio, (int, float)):
        return f"w{round(float(ratio) * 100):03d}"
    values = [float(v) for v in ratio.values()] or [1.0]
    return f"m{round(100 * sum(values) / len(values)):03d}"


def _unique_names(ratios: Sequence[Ratio]) -> list[SizeSpec]:
    out: list[SizeSpec] = []
    taken: set[str] = set()
    for r in ratios:
        base = name = size_name(r)
        i = 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        out.append((name, r))
    return out


def _strip_hooks(model: nn.Module) -> nn.Module:
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return model


def named_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer by name (tied tensors under each name)."""
    return {**dict(model.named_parameters(remove_duplicate=False)),
            **dict(model.named_buffers(remove_duplicate=False))}


def _gather(t: Tensor, index: tuple[Tensor | None, ...]) -> Tensor:
    for dim, idx in enumerate(index):
        if idx is not None:
            t = t.index_select(dim, idx)
    return t


@dataclass
class SubNet:
    """One size as a dense network whose tensors are gathered from the TA.

    `index[name]` holds, per dimension of the TA's tensor `name`, the kept
    indices (None: all kept). `skeleton` is the dense structure from
    prune.materialize; its own tensors are never trained, only its shape used."""

    name: str
    ratio: Ratio
    skeleton: nn.Module
    index: dict[str, tuple[Tensor | None, ...]]
    macs: int

    @property
    def is_full(self) -> bool:
        return all(i is None for idx in self.index.values() for i in idx)

    def tensors(self, source: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The size's tensors, gathered from the TA's (`source`). Buffers are always copies,
        so a train-mode pass cannot move the TA's BatchNorm statistics."""
        out = {}
        for name, idx in self.index.items():
            t = _gather(source[name], idx)
            out[name] = t.clone() if t is source[name] and not t.requires_grad else t
        return out

    def to(self, device: torch.device | str) -> "SubNet":
        """Move the skeleton and the kept indices (a gather needs its index beside the tensor)."""
        self.skeleton.to(device)
        self.index = {n: tuple(i if i is None else i.to(device) for i in idx) for n, idx in self.index.items()}
        return self

    def dense(self, source: Mapping[str, Tensor]) -> nn.Module:
        """A standalone copy with the gathered tensors (no autograd link to the TA)."""
        model = _strip_hooks(copy.deepcopy(self.skeleton))
        with torch.no_grad():
            model.load_state_dict({k: v.detach().clone() for k, v in self.tensors(source).items()})
        return model


def _kept_indices(ta: nn.Module, example: Tensor, groups: Sequence[P.ChannelGroup], ratio: Ratio,
                  order: Mapping[str, Sequence[int]], round_to: int) -> tuple[nn.Module, dict]:
    """Materialise `ratio` once per tensor dimension on index-tagged copies; read the kept indices."""
    ref = named_tensors(ta)
    ndim = max((t.dim() for t in ref.values()), default=0)
    skeleton: nn.Module | None = None
    index: dict[str, list[Tensor | None]] = {n: [None] * t.dim() for n, t in ref.items()}
    for dim in range(max(ndim, 1)):
        tagged = _strip_hooks(copy.deepcopy(ta))
        with torch.no_grad():
            for t in named_tensors(tagged).values():
                if t.is_floating_point() and t.dim() > dim:
                    shape = [1] * t.dim()
                    shape[dim] = -1
                    t.copy_(torch.arange(t.shape[dim], dtype=t.dtype).view(shape).expand_as(t))
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            dense = P.materialize(tagged, example, groups, ratio, order, round_to)
        skeleton = skeleton or dense
        for name, t in named_tensors(dense).items():
            if name not in ref:
                raise RuntimeError(f"materialize renamed or added tensor {name!r}")
            if t.dim() > dim and t.shape[dim] != ref[name].shape[dim]:
                if not t.is_floating_point():
                    raise RuntimeError(f"cannot trace the kept indices of non-float tensor {name!r}")
                first = [0] * t.dim()
                first[dim] = slice(None)
                index[name][dim] = t[tuple(first)].round().long()
    assert skeleton is not None
    return _strip_hooks(skeleton), {n: tuple(v) for n, v in index.items()}


class NestedFamily:
    """The TA (`module`), its channel groups and order, and its named sizes.

    ``family.subnet("w050")(x)`` runs a size sliced (for training),
    ``family.set_width(0.5); family.module(x)`` runs it masked, and
    ``family.extract("w050", calib_x)`` returns it as a standalone dense module
    with recalibrated BatchNorm statistics."""

    def __init__(self, module: nn.Module, example: Tensor, sizes: Sequence[SizeSpec], *,
                 groups: Sequence[P.ChannelGroup] | None = None,
                 order: Mapping[str, Sequence[int]] | None = None, round_to: int = 8) -> None:
        if not sizes:
            raise ConfigError("a nested family needs at least one size")
        names = [n for n, _ in sizes]
        if len(set(names)) != len(names):
            raise ConfigError(f"size names must be unique, got {names}")
        self.module = module
        self.example = example[:2]
        self.round_to = int(round_to)
        self.groups = list(groups) if groups is not None else P.channel_groups(module, self.example)
        self.nestable = [g for g in self.groups if g.nestable]
        self.order = {k: tuple(int(i) for i in v) for k, v in
                      (order or P.importance_order(module, self.example, self.groups)).items()}
        self.ratios: dict[str, Ratio] = {n: _check_ratio(r, self.groups) for n, r in sizes}
        self._subnets: dict[str, SubNet] = {}
        self._masker: P.ChannelMasker | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def names(self) -> list[str]:
        return list(self.ratios)

    def keep_counts(self, ratio: Ratio) -> dict[str, int]:
        """Channels each nestable group keeps at `ratio` (identical counts = identical sub-network)."""
        return {g.key: P.keep_count(g.size, _ratio_for(ratio, g.key), self.round_to, g.unit) for g in self.nestable}

    def subnet(self, name: str) -> SubNet:
        if name not in self._subnets:
            ratio = self.ratios[name]
            skeleton, index = _kept_indices(self.module, self.example, self.nestable, ratio, self.order,
                                            self.round_to)
            self._subnets[name] = SubNet(name, ratio, skeleton, index, P.count_macs(skeleton, self.example[:1]))
        return self._subnets[name]

    def forward(self, name: str, x: Tensor) -> Tensor:
        """Run size `name` sliced, on the TA's current tensors (differentiable), in the TA's mode."""
        sub = self.subnet(name)
        sub.skeleton.train(self.module.training)
        return torch.func.functional_call(sub.skeleton, sub.tensors(named_tensors(self.module)), (x,))

    def train(self, mode: bool = True) -> "NestedFamily":
        """Set the TA and every built size to train/eval mode together.

        A skeleton is a copy made when its size is first built, so it keeps the
        mode the TA had then; a TA built in eval mode (a lifted or pruned teacher)
        would otherwise train its sizes on the TA's full-width BatchNorm running
        statistics instead of batch statistics."""
        self.module.train(mode)
        for sub in self._subnets.values():
            sub.skeleton.train(mode)
        return self

    # ----------------------------------------------------------------- masked
    def set_width(self, ratio: Ratio) -> None:
        """Mask the TA in place to `ratio` (1.0: the unmasked TA, bit for bit)."""
        if self._masker is None:
            self._masker = P.ChannelMasker(self.module, self.nestable, self.order, self.round_to)
        self._masker.set_width(ratio)

    def remove_masks(self) -> None:
        if self._masker is not None:
            self._masker.remove()
            self._masker = None

    # ------------------------------------------------------------- extraction
    def extract(self, name: str, calib_x: Tensor | None = None, batch_size: int = 128) -> nn.Module:
        """Size `name` as a dense eval-mode module; BatchNorm recalibrated on `calib_x` when given."""
        model = self.subnet(name).dense(named_tensors(self.module))
        if calib_x is not None:
            recalibrate_bn(model, calib_x, batch_size)
        return model.eval()

    def state(self) -> dict[str, Any]:
        """Plain data that, with the TA's state_dict, restores the family."""
        return {"sizes": [[n, plain_ratio(r)] for n, r in self.ratios.items()],
                "channel_order": {k: list(v) for k, v in self.order.items()},
                "round_to": self.round_to}


def _ratio_for(ratio: Ratio, key: str) -> float:
    return float(ratio) if isinstance(ratio, (int, float)) else float(ratio.get(key, 1.0))


def plain_ratio(ratio: Ratio) -> float | dict[str, float]:
    """A ratio as JSON-ready plain data (floats, string keys)."""
    return float(ratio) if isinstance(ratio, (int, float)) else {str(k): float(v) for k, v in ratio.items()}


def _check_ratio(ratio: Ratio, groups: Sequence[P.ChannelGroup]) -> Ratio:
    values = [ratio] if isinstance(ratio, (int, float)) else list(ratio.values())
    bad = [v for v in values if not 0.0 < float(v) <= 1.0]
    if bad:
        raise ConfigError(f"width ratios must be in (0, 1], got {bad}")
    if not isinstance(ratio, (int, float)):
        known = {g.key for g in groups}
        unknown = sorted(set(ratio) - known)
        if unknown:
            raise ConfigError(f"unknown channel groups in width {unknown} (known: {', '.join(sorted(known))})")
        return {str(k): float(v) for k, v in ratio.items()}
    return float(ratio)


# ---------------------------------------------------------------------------- sizes

def choose_sizes(ta: nn.Module, example: Tensor, groups: Sequence[P.ChannelGroup],
                 order: Mapping[str, Sequence[int]], latency_fn: Callable[[nn.Module], float], budget_ms: float,
                 n: int = 4, student_ratio: Ratio | None = None, margin: float = 0.8,
                 round_to: int = 8, fits_span: float = 0.4) -> list[SizeSpec]:
    """`n` uniform widths from largest (the TA, 1.0) to smallest, plus the searched student.

    The smallest is the widest that keeps predicted latency under
    `margin × budget_ms` (0.8: 20 % headroom for the gap between predicted and
    measured latency), the next the widest predicted within the budget itself
    (the most capacity the budget allows: a zoo teacher's family at half its latency
    otherwise had its nearest size at 0.64x the budget); the others are spaced
    geometrically in latency between it and the TA, so each size is about the same
    factor faster than the next (the budgets users ask for are spread on a log
    scale: 1, 2, 5 ms...).
    Widths are searched on a grid of 1/64 and deduplicated by the channel counts
    they keep after rounding to `round_to`. The searched student
    (`student_ratio`, uniform or per group) is added, replacing a size that
    keeps the same channels. Returns (name, ratio) pairs, largest first. If even the narrowest width misses the target, it is
    returned anyway and a warning logged: the export stage reports the miss. If the TA itself
    fits, the smallest is the widest at `fits_span` of the TA's latency instead: the sizes then
    still span a range of budgets (the user gets faster sizes to choose from, not n copies of
    the TA)."""
    if n < 1:
        raise ValueError(f"n must be at least 1 but got {n}")
    if budget_ms <= 0 or not 0 < margin <= 1:
        raise ValueError(f"budget_ms must be positive and margin in (0, 1], got {budget_ms}, {margin}")
    nestable = [g for g in groups if g.nestable]
    grid = _width_grid(nestable, round_to)
    cache: dict[Any, float] = {}

    def latency(ratio: Ratio) -> float:
        key = ratio if isinstance(ratio, float) else tuple(sorted(ratio.items()))
        if key not in cache:
            cache[key] = float(latency_fn(P.materialize(ta, example, nestable, ratio, order, round_to).eval()))
        return cache[key]

    def widest_under(target: float) -> int:
        """Index of the widest grid ratio with latency <= target (latency grows with width)."""
        lo, hi = 0, len(grid) - 1
        if latency(grid[lo]) > target:
            return 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if latency(grid[mid]) <= target else (lo, mid - 1)
        return lo

    target = margin * budget_ms
    ta_fits = latency(grid[-1]) <= target
    if ta_fits:  # span the sizes below it all the same
        target = fits_span * latency(grid[-1])
    i_min = widest_under(target)
    if latency(grid[i_min]) > target and not ta_fits:
        log.warning("the narrowest nested width (%.3f) is predicted at %.3f ms, over %.0f%% of the %.3f ms budget",
                    grid[i_min], latency(grid[i_min]), 100 * margin, budget_ms)
    picks = {i_min, len(grid) - 1} if n > 1 else {i_min}
    floor = i_min
    if not ta_fits and n > 2:
        # the widest predicted within the budget itself: the size a user serves at that budget; the
        # smallest keeps the headroom in case it measures over (premeasure re-plans when one does)
        i_fit = widest_under(budget_ms)
        if i_min < i_fit < len(grid) - 1:
            picks.add(i_fit)
            floor = i_fit
    lo_ms, hi_ms = latency(grid[floor]), latency(grid[-1])
    middles = n - len(picks)
    for j in range(1, middles + 1):
        goal = lo_ms * (hi_ms / lo_ms) ** (j / (middles + 1)) if lo_ms > 0 else hi_ms * j / (middles + 1)
        picks.add(max(floor, widest_under(goal)))
    ratios: list[Ratio] = [grid[i] for i in sorted(picks, reverse=True)]
    if student_ratio is not None:
        student = _check_ratio(student_ratio, groups)
        # the searched student replaces a size that keeps the same channels, so it is listed under its own ratio
        ratios = [r for r in ratios if _counts(nestable, r, round_to) != _counts(nestable, student, round_to)]
        ratios.append(student)
        ratios.sort(key=latency, reverse=True)
    return _unique_names(ratios)


def _width_grid(groups: Sequence[P.ChannelGroup], round_to: int, steps: int = 64) -> list[float]:
    """Ascending widths k/64, one per distinct set of kept channel counts.

    Many k give the same counts after rounding (with 16/32/64-channel groups
    and round_to 8, every k from 28 to 36 keeps 8/16/32); the representative is
    the 'roundest' k (most factors of 2, so 32/64 = 0.5 → 'w050', not 'w056')."""
    by_counts: dict[tuple[int, ...], list[int]] = {}
    for k in range(1, steps + 1):
        by_counts.setdefault(_counts(groups, k / steps, round_to), []).append(k)
    picks = [max(ks, key=lambda k: (k & -k, k)) for ks in by_counts.values()]  # 64/64 = 1.0 for the TA
    return sorted(k / steps for k in picks)


def _counts(groups: Sequence[P.ChannelGroup], ratio: Ratio, round_to: int) -> tuple[int, ...]:
    return tuple(P.keep_count(g.size, _ratio_for(ratio, g.key), round_to, g.unit) for g in groups)

