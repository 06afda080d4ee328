"""Search spaces: where student architectures come from.

A space turns sampler choices into a JSON architecture and the architecture into
a network. Every space obeys one contract (`SearchSpace`):

- ``suggest(trial) -> arch``: a JSON-serialisable dict with a ``"space"`` key;
- ``build(arch, teacher) -> nn.Module``: deterministic, so the manifest can rebuild it;
- ``widen(arch, factor) -> arch``: a wider network of the same depth in which
  ``arch`` is a prefix sub-network (the MatTA teacher assistant, see `assistant`).

Built-ins:

- ``teacher_scaled``: the teacher itself, thinner (a width ratio per coupled channel
  group of `prune.channel_groups`) and shallower (identity-shaped residual blocks, or
  shape-keeping stretches of a network without any, removed, see `blocks`). It keeps
  the teacher's weights, which the distillation stage exploits: the assistant starts from the teacher, not from scratch.
- ``cnn`` and ``transformer``: the student families of `compressor.families`, so a
  student can differ in kind from its teacher (DisWOT's point).

Channel counts are multiples of ``round_to`` (the hardware profile's multiple, 8 on
most targets): odd counts run slower, and a student of width w nests exactly in an
assistant of width 2w only when the rounding of both agrees.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import torch
from torch import fx, nn

from .. import prune as P
from ..errors import ConfigError
from ..files import first_line
from ..families import build_family
from ..registry import Registry
from ..types import Teacher
from .blocks import ResidualBlock, branch_shares, drop_blocks, find_residual_blocks, head_units

Arch = dict[str, Any]


class Trial(Protocol):
    """The part of `optuna.trial.Trial` a space uses (spaces never import Optuna)."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class SearchSpace(ABC):
    """Bound to one teacher: its input shape, classes and (for `teacher_scaled`) its graph."""

    name: ClassVar[str]

    def __init__(self, teacher: Teacher, round_to: int = 8) -> None:
        if round_to < 1:
            raise ValueError(f"round_to must be at least 1 but got {round_to}.")
        self.teacher = teacher
        self.round_to = int(round_to)
        self.example = teacher.spec.example(batch=2)

    @abstractmethod
    def suggest(self, trial: Trial) -> Arch:
        """Sample one architecture; parameter names are prefixed by the space."""

    @abstractmethod
    def build(self, arch: Mapping[str, Any], teacher: Teacher) -> nn.Module:
        """The network of `arch`, in eval mode."""

    @abstractmethod
    def widen(self, arch: Mapping[str, Any], factor: float) -> Arch:
        """`arch` with every nestable width multiplied by `factor` (depth unchanged)."""

    @property
    def depth_choices(self) -> int:
        """How many keep-or-drop choices over the teacher's blocks the space samples (0: none)."""
        return 0

    def anchors(self) -> list[dict[str, Any]]:
        """Sampler parameters of networks worth evaluating first (the smallest of the space),
        so that a tight budget has at least one feasible candidate early."""
        return []

    def budget_anchors(self, fits: Callable[[Arch], bool],
                       inputs: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Sampler parameters of networks worth evaluating first that depend on the budget;
        `fits(arch)`: whether the network's predicted latency meets it; `inputs`: real samples,
        where a choice reads the teacher's activations."""
        return []


class FixedParams:
    """A `Trial` that answers every choice from a dict of sampler parameters."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.params[name]


class UniformTrial:
    """A `Trial` for `TeacherScaledSpace.suggest`: every width the choice nearest one ratio, every
    block kept, dropped or (`alternate`) every second one kept."""

    def __init__(self, ratio: float, keep: str) -> None:
        self.ratio, self.keep, self.blocks = ratio, keep, 0

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name.startswith("ts.width"):
            return min(choices, key=lambda c: abs(float(c) - self.ratio))
        self.blocks += 1
        return {"none": False, "all": True, "alternate": self.blocks % 2 == 0}[self.keep]


SPACES: Registry[type[SearchSpace]] = Registry("search space")


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    SPACES.add(cls.name, cls)
    return cls


def build_arch(arch: Mapping[str, Any], teacher: Teacher) -> nn.Module:
    """Rebuild any searched architecture (student or assistant) from its JSON record."""
    if "space" not in arch:
        raise ConfigError(f"architecture has no 'space' key: {dict(arch)}")
    space = SPACES.get(str(arch["space"]))(teacher, round_to=int(arch.get("round_to", 8)))
    return space.build(arch, teacher)


def round_up(x: float, multiple: int) -> int:
    return int(multiple * math.ceil(x / multiple - 1e-9))


def _ties(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Split `items` (in execution order) into at most `n` contiguous chunks of near-equal size:
    many groups then share few choices, stage by stage, which keeps the sampler's space small."""
    k = min(n, len(items))
    bounds = [round(i * len(items) / k) for i in range(k + 1)] if k else []
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:])]


def _execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_a, n=n: order.append(n))
             for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order


def _seeded_build(fn, *args: Any) -> nn.Module:
    # family weights come from the global RNG: pin it so an arch always rebuilds the same network
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn(*args).eval()


def _with_head_units(model: nn.Module, groups: list[P.ChannelGroup]) -> list[P.ChannelGroup]:
    """Groups of attention projections in a lifted graph are cut in whole heads (see `head_units`)."""
    if not isinstance(model, fx.GraphModule):
        return groups
    units = head_units(model)
    out = []
    for g in groups:
        unit = max([units.get(name, 1) for name in g.layers] + [g.unit])
        out.append(dataclasses.replace(g, unit=unit) if unit != g.unit and g.size % unit == 0 else g)
    return out


def _cuts(model: nn.Module, example: torch.Tensor, groups: Sequence[P.ChannelGroup], keys: Sequence[str],
          ratio: float, classes: int, round_to: int) -> bool:
    """Whether cutting the groups `keys` to `ratio` leaves a network that runs and scores every class."""
    try:
        cut = P.materialize(model, example, groups, {k: ratio for k in keys}, None, round_to).eval()
        with torch.no_grad():
            out = cut(example)
        return isinstance(out, torch.Tensor) and tuple(out.shape) == (len(example), classes)
    except Exception:  # noqa: BLE001 - any failure means the group cannot be cut
        return False


def uncuttable_groups(model: nn.Module, example: torch.Tensor, groups: Sequence[P.ChannelGroup], classes: int,
                      round_to: int) -> tuple[str, ...]:
    """Keys of the groups that cannot be cut, found by cutting them (each at a quarter and three quarters).

    Torch-Pruning's coupling is not always complete on third-party graphs: an attention
    projection whose output is reshaped with its head count written into the graph, a
    coupling through an op it does not model. Rather than propose such networks, the
    space keeps these groups whole. All groups are cut at once; if that fails, the set is
    halved until single failing groups are found (a few cuts when most groups are fine),
    and a failure that only shows in combination is found on the shortest failing prefix.
    """
    bad: list[str] = []

    def cuts(keys: Sequence[str], ratio: float) -> bool:
        return _cuts(model, example, groups, keys, ratio, classes, round_to)

    def halve(keys: list[str], ratio: float, failed: bool = False) -> None:
        if not keys or (not failed and cuts(keys, ratio)):
            return
        if len(keys) == 1:
            bad.append(keys[0])
            return
        halve(keys[: len(keys) // 2], ratio)
        halve(keys[len(keys) // 2:], ratio)

    for ratio in (0.25, 0.75):
        keys = [g.key for g in groups if g.key not in bad]
        if cuts(keys, ratio):
            continue
        halve(keys, ratio, failed=True)
        keys = [g.key for g in groups if g.key not in bad]
        while keys and not cuts(keys, ratio):  # each half cuts, together they do not
            lo, hi = 1, len(keys)
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if not cuts(keys[:mid], ratio) else (mid + 1, hi)
            bad.append(keys.pop(lo - 1))
    return tuple(bad)


@register_space
class TeacherScaledSpace(SearchSpace):
    """The teacher with fewer channels per coupled group and fewer residual blocks.

    arch: ``{"space": "teacher_scaled", "ratios": {group_key: r}, "drop": [add_node, ...],
    "round_to": 8}``. Group keys are the teacher's; after blocks are dropped, groups can
    split (a residual chain loses a member) and each part keeps its original group's ratio.
    Depth is searched only on `fx.GraphModule` teachers (what `compressor.intake.teacher` produces
    by lifting); a plain module is searched in width only.
    """

    name = "teacher_scaled"
    ratios: ClassVar[tuple[float, ...]] = (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
    max_width_choices: ClassVar[int] = 8
    max_depth_choices: ClassVar[int] = 8
    cached_depths: ClassVar[int] = 16

    def __init__(self, teacher: Teacher, round_to: int = 8) -> None:
        super().__init__(teacher, round_to)
        if not teacher.prunable:
            raise ConfigError("the teacher_scaled space needs a prunable teacher (its layers could not be lifted)")
        self.base = teacher.module
        try:
            groups = _with_head_units(self.base, P.channel_groups(self.base, self.example))
            self.blocks: list[ResidualBlock] = (find_residual_blocks(self.base, self.example)
                                                if isinstance(self.base, fx.GraphModule) else [])
        except Exception as e:  # e.g. Torch-Pruning cannot follow ShuffleNet's channel shuffle
            raise ConfigError(f"the teacher's channel coupling cannot be traced ({type(e).__name__}: "
                              f"{first_line(e)})") from None
        order = _execution_order(self.base, self.example)
        rank = {n: i for i, n in enumerate(order)}
        groups.sort(key=lambda g: rank.get(g.key, len(rank)))
        # groups no cut leaves runnable stay at full width: candidates never touch them
        self.uncuttable = uncuttable_groups(self.base, self.example, groups, self.teacher.spec.num_classes,
                                            self.round_to)
        self.groups = [g for g in groups if g.key not in self.uncuttable]
        self._uncuttable_layers = {m.module for g in groups if g.key in self.uncuttable for m in g.members}
        self._group_of_layer = {m.module: g.key for g in self.groups for m in g.members}
        self._nestable = {g.key: g.nestable for g in self.groups}
        self._width_ties = _ties([g.key for g in self.groups], self.max_width_choices)
        self._depth_ties = _ties([b.add for b in self.blocks], self.max_depth_choices)
        self._plain_skips = {b.add: b.skip for b in self.blocks if not b.residual}
        self._reduced: dict[tuple[str, ...], tuple[nn.Module, list[P.ChannelGroup], dict]] = {}

    @property
    def depth_choices(self) -> int:
        return len(self._depth_ties)

    def suggest(self, trial: Trial) -> Arch:
        ratios: dict[str, float] = {}
        for i, keys in enumerate(self._width_ties):
            r = float(trial.suggest_categorical(f"ts.width{i}", self.ratios))
            ratios.update({k: r for k in keys})
        drop = []
        for i, adds in enumerate(self._depth_ties):
            if not trial.suggest_categorical(f"ts.keep{i}", (True, False)):
                drop.extend(adds)
        return self.canonical({"space": self.name, "ratios": ratios, "drop": drop, "round_to": self.round_to})

    def canonical(self, arch: Mapping[str, Any]) -> Arch:
        """One spelling per network: blocks inside dropped blocks and the ratios of groups
        that no longer exist are left out (so equal networks have equal records)."""
        blocks = {b.add: b for b in self.blocks}
        drop = [a for a in (b.add for b in self.blocks) if a in set(arch.get("drop", ()))]
        gone = {m for a in drop for m in blocks[a].layers}
        drop = [a for a in drop if not any(a != o and blocks[a].layers and set(blocks[a].layers) <= set(blocks[o].layers)
                                           for o in drop)]
        ratios = {g.key: float(arch["ratios"].get(g.key, 1.0)) for g in self.groups
                  if not all(m.module in gone for m in g.members)}
        return {"space": self.name, "ratios": ratios, "drop": drop, "round_to": int(arch.get("round_to", self.round_to))}

    def _reduce(self, drop: Sequence[str]) -> tuple[nn.Module, list[P.ChannelGroup], dict]:
        """The teacher without the `drop` blocks, its groups and channel order (kept for the
        last few depth choices: tracing costs more than cutting, and a study revisits them)."""
        key = tuple(drop)
        if key in self._reduced:
            self._reduced[key] = self._reduced.pop(key)  # most recently used last
        else:
            model = drop_blocks(self.base, drop, self.example, self._plain_skips) if drop else self.base
            if not drop:  # the teacher's groups were cut-tested when the space was built
                groups, order = self.groups, P.importance_order(model, self.example, self.groups)
            else:  # a shallower graph couples channels otherwise: its groups are cut-tested afresh
                try:
                    groups = [g for g in _with_head_units(model, P.channel_groups(model, self.example))
                              if not any(m.module in self._uncuttable_layers for m in g.members)]
                    bad = uncuttable_groups(model, self.example, groups, self.teacher.spec.num_classes,
                                            self.round_to)
                    groups = [g for g in groups if g.key not in bad]
                    order = P.importance_order(model, self.example, groups)
                except Exception:  # noqa: BLE001 - Torch-Pruning cannot trace it: this depth keeps full width
                    groups, order = [], {}
            self._reduced[key] = (model, groups, order)
            while len(self._reduced) > self.cached_depths:
                self._reduced.pop(next(iter(self._reduced)))
        return self._reduced[key]

    def _ratio_of(self, group: P.ChannelGroup, ratios: Mapping[str, float]) -> float:
        if group.key in ratios:
            return float(ratios[group.key])
        for m in group.members:  # a part of a teacher group split by block removal
            if self._group_of_layer.get(m.module) in ratios:
                return float(ratios[self._group_of_layer[m.module]])
        return 1.0

    def build(self, arch: Mapping[str, Any], teacher: Teacher) -> nn.Module:
        if teacher.module is not self.base:
            return type(self)(teacher, int(arch.get("round_to", self.round_to))).build(arch, teacher)
        model, groups, order = self._reduce(list(arch.get("drop", ())))
        ratios = {g.key: self._ratio_of(g, arch.get("ratios", {})) for g in groups}
        if all(r >= 1.0 for r in ratios.values()):
            return copy.deepcopy(model).eval()
        # the most important teacher channels (L1, as OFA) are kept: the network starts close to the teacher
        return P.materialize(model, self.example, groups, ratios, order,
                             int(arch.get("round_to", self.round_to))).eval()

    def widen(self, arch: Mapping[str, Any], factor: float) -> Arch:
        # groups behind a layer norm are not nestable (a mask is not a cut there): they keep their width
        ratios = {k: (min(1.0, r * factor) if self._nestable.get(k, False) else r) for k, r in arch["ratios"].items()}
        return {**self.canonical(arch), "ratios": ratios}

    def anchors(self) -> list[dict[str, Any]]:
        smallest = {f"ts.width{i}": self.ratios[0] for i in range(len(self._width_ties))}
        return [{**smallest, **{f"ts.keep{i}": False for i in range(len(self._depth_ties))}}]

    def budget_anchors(self, fits: Callable[[Arch], bool],
                       inputs: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """The widest uniform cut of the whole teacher (every block kept, one ratio everywhere)
        that fits, and the next narrower one: what pruning the teacher by hand gives, with the
        teacher's weights. Scored first, so the search never misses it for want of sampling it:
        NSGA-II starts from random draws, and on SqueezeNet at half its latency 7 of the 8 teacher
        cuts it drew landed just over the budget, and a 3k-parameter CNN was all that fitted
        (BENCHMARKS.md "Zoo teachers"). Latency rises with the ratio, so the ratios are bisected:
        about three networks built. Where no such cut fits: `depth_anchors`."""
        keep = {f"ts.keep{i}": True for i in range(len(self._depth_ties))}

        def params(r: float) -> dict[str, Any]:
            return {**{f"ts.width{i}": r for i in range(len(self._width_ties))}, **keep}

        lo, hi, best = 0, len(self.ratios) - 2, None  # ratio 1.0 everywhere is the teacher itself
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits(self.suggest(UniformTrial(self.ratios[mid], "all"))):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best is not None:
            # and the next narrower cut: the widest is predicted just under the budget, and the
            # prediction is 10-15 % off on zoo teachers. When it measures over (premeasure), the
            # search re-selects among what it scored, which without this was a network a fifth of the
            # budget (ConvNeXt-atto at half its latency: 0.09 ms of 0.34). A ratio that keeps the
            # same channels as a wider one (or as the teacher: 16 channels under a multiple of 16)
            # is the same network, not an anchor
            seen = {self._uniform_counts(1.0)}
            out = []
            for i in range(best, -1, -1):
                counts = self._uniform_counts(self.ratios[i])
                if counts not in seen:
                    out.append(params(self.ratios[i]))
                    seen.add(counts)
                if len(out) == 2:
                    break
            if out:
                return out
        return self.depth_anchors(fits, inputs)

    def _uniform_counts(self, ratio: float) -> tuple[int, ...]:
        """The channels every group keeps in a uniform cut at `ratio`."""
        return tuple(P.keep_count(g.size, ratio, self.round_to, g.unit) for g in self.groups)

    # narrower than this, a depth anchor is no longer "the teacher, shallower": the width anchors'
    # and the sampler's ground
    depth_anchor_widths: ClassVar[tuple[float, ...]] = (1.0, 0.75, 0.5)

    def depth_anchors(self, fits: Callable[[Arch], bool],
                      inputs: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """Where no cut of every block fits (latency set by the number of blocks more than their
        width: MobileNetV3-Small at a quarter of its latency), the teacher made shallower instead: at each of
        `depth_anchor_widths`, the fewest blocks dropped, those that change what flows through them
        least first (`branch_shares` on `inputs`), that fit. A narrower anchor is kept only
        where it keeps more blocks than the wider ones. Without them, the only teacher cut sure to be
        scored there is every block dropped (the smallest anchor): on ConvNeXt-atto, before its
        residual stream could be cut, 4x under the budget and 2.8 points below the teacher."""
        shares = branch_shares(self.base, self.blocks, self.example if inputs is None else inputs)
        ties = self._depth_ties
        # least contributing first; between equals, the later block
        order = sorted(range(len(ties)),
                       key=lambda i: (sum(shares.get(a, math.inf) for a in ties[i]) / len(ties[i]), -i))

        def params(r: float, k: int) -> dict[str, Any]:
            dropped = set(order[:k])
            return {**{f"ts.width{i}": r for i in range(len(self._width_ties))},
                    **{f"ts.keep{i}": i not in dropped for i in range(len(ties))}}

        def ok(r: float, k: int) -> bool:
            return fits(self.suggest(FixedParams(params(r, k))))

        out: list[dict[str, Any]] = []
        most = len(ties)  # blocks an anchor may drop: fewer than any wider anchor did
        for r in self.depth_anchor_widths:
            if most < 1 or r not in self.ratios or not ok(r, most):
                continue  # dropping that many does not fit at this width
            lo, hi = 1, most  # the fewest drops that fit lie in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if ok(r, mid) else (mid + 1, hi)
            out.append(params(r, lo))
            most = lo - 1
        return out


def _spatial(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape) if len(shape) == 1 else tuple(shape[1:])


@register_space
class CNNSpace(SearchSpace):
    """`families.CNNFamily`: stages x width x depth, one kernel size.

    arch: ``{"space": "cnn", "family": "cnn", "widths": [...], "depths": [...], "kernel": k,
    "round_to": 8[, "stem": 2]}``. Each stage after the first halves the resolution, so the
    number of stages is capped where the feature map would drop below 2. Inputs of 16 or more
    per side also choose the stem's stride: a stride-2 stem is the cheap route to depth, and
    the only one under budgets near the runtime's per-layer floor (a quarter of a
    MobileNetV3-Small's 0.11 ms), where full-resolution first stages leave room for two
    layers and a receptive field too small to read a digit. Images of 32 or more per side
    may also start with a stride-4 patchify stem, which buys width at the same latency: on
    digits at 32x32, from random weights, a [32, 32] network with it reached 88.9 % in
    11.7 us where a [16, 16] one with the stride-2 stem reached 64.1 % in 13.2 us.
    """

    name = "cnn"
    widths: ClassVar[tuple[int, ...]] = (8, 16, 24, 32, 48, 64, 96, 128)
    depths: ClassVar[tuple[int, ...]] = (1, 2, 3)
    max_stages: ClassVar[int] = 4

    def __init__(self, teacher: Teacher, round_to: int = 8) -> None:
        super().__init__(teacher, round_to)
        spatial = _spatial(teacher.spec.shape)
        most = 1 + int(math.log2(max(1, min(spatial) // 2)))
        self.stages = tuple(range(min(2, most), min(self.max_stages, most) + 1)) or (1,)
        self.stems = (1, 2, 4) if len(spatial) == 2 and min(spatial) >= 32 else (1, 2) if min(spatial) >= 16 else (1,)
        # stages that fit after each strided stem (a halving fewer per factor of 2)
        self._most_after = {s: 1 + int(math.log2(max(1, min(spatial) // (2 * s)))) for s in self.stems if s > 1}
        self.width_choices = tuple(sorted({round_up(w, self.round_to) for w in self.widths}))
        self.kernels = (3, 5, 7) if len(spatial) == 1 else (3, 5)

    def suggest(self, trial: Trial) -> Arch:
        n = int(trial.suggest_categorical("cnn.stages", self.stages))
        widths = [int(trial.suggest_categorical(f"cnn.width{i}", self.width_choices)) for i in range(n)]
        depths = [int(trial.suggest_categorical(f"cnn.depth{i}", self.depths)) for i in range(n)]
        kernel = int(trial.suggest_categorical("cnn.kernel", self.kernels))
        arch = {"space": self.name, "family": "cnn", "widths": widths, "depths": depths, "kernel": kernel,
                "round_to": self.round_to}
        if len(self.stems) > 1:
            stem = int(trial.suggest_categorical("cnn.stem", self.stems))
            if stem > 1:
                keep = max(1, min(n, self._most_after[stem]))
                arch.update(widths=widths[:keep], depths=depths[:keep], stem=stem)
        return arch

    def build(self, arch: Mapping[str, Any], teacher: Teacher) -> nn.Module:
        return _seeded_build(build_family, arch, teacher.spec.shape, teacher.spec.num_classes)

    def widen(self, arch: Mapping[str, Any], factor: float) -> Arch:
        return {**arch, "widths": [round_up(w * factor, self.round_to) for w in arch["widths"]]}

    def anchors(self) -> list[dict[str, Any]]:
        def narrowest(n: int) -> dict[str, Any]:
            params = {"cnn.stages": n, **{f"cnn.width{i}": self.width_choices[0] for i in range(n)},
                      **{f"cnn.depth{i}": 1 for i in range(n)}, "cnn.kernel": 3}
            if len(self.stems) > 1:  # the cheapest networks have the most strided stem
                params["cnn.stem"] = max(self.stems)
            return params

        if len(self.stems) == 1:
            return [narrowest(self.stages[0])]
        # the narrowest network at every depth that fits after the stem: under a budget near the
        # per-layer floor these are the feasible ones, and the deeper ones see more of the image
        return [narrowest(n) for n in self.stages if n <= self._most_after[max(self.stems)]]


@register_space
class TransformerSpace(SearchSpace):
    """`families.TransformerFamily`: depth, embedding width, heads, MLP ratio, patch size.

    arch: ``{"space": "transformer", "family": "transformer", "depth", "dim", "heads",
    "head_dim", "mlp_ratio", "patch", "round_to"}``. Patch sizes are those giving 8 to 64
    tokens for the teacher's input. Widening adds heads of the same `head_dim` and MLP
    neurons; the embedding width passes through layer norms and is not nested.
    """

    name = "transformer"
    depths: ClassVar[tuple[int, ...]] = (1, 2, 3, 4)
    dims: ClassVar[tuple[int, ...]] = (32, 48, 64, 96, 128)
    heads: ClassVar[tuple[int, ...]] = (2, 4)
    mlp_ratios: ClassVar[tuple[float, ...]] = (1.0, 2.0, 4.0)

    def __init__(self, teacher: Teacher, round_to: int = 8) -> None:
        super().__init__(teacher, round_to)
        spatial = _spatial(teacher.spec.shape)
        tokens = {p: math.prod(s // p for s in spatial) for p in (2, 4, 8, 16) if p <= min(spatial)}
        fit = tuple(p for p, t in tokens.items() if 8 <= t <= 64)
        if not fit:  # a tiny input: the patch closest to 16 tokens, or pixels as tokens
            fit = (min(tokens, key=lambda p: abs(tokens[p] - 16)),) if tokens else (1,)
        self.patches = fit
        self.dim_choices = tuple(sorted({round_up(d, self.round_to) for d in self.dims}))

    def suggest(self, trial: Trial) -> Arch:
        dim = int(trial.suggest_categorical("vit.dim", self.dim_choices))
        heads = int(trial.suggest_categorical("vit.heads", self.heads))
        return {"space": self.name, "family": "transformer",
                "depth": int(trial.suggest_categorical("vit.depth", self.depths)),
                "dim": dim, "heads": heads, "head_dim": max(1, dim // heads),
                "mlp_ratio": float(trial.suggest_categorical("vit.mlp_ratio", self.mlp_ratios)),
                "patch": int(trial.suggest_categorical("vit.patch", self.patches)), "round_to": self.round_to}

    def build(self, arch: Mapping[str, Any], teacher: Teacher) -> nn.Module:
        return _seeded_build(build_family, arch, teacher.spec.shape, teacher.spec.num_classes)

    def widen(self, arch: Mapping[str, Any], factor: float) -> Arch:
        dim = int(arch["dim"])
        hidden = int(round(dim * float(arch["mlp_ratio"])))
        return {**arch, "heads": max(int(arch["heads"]), int(round(int(arch["heads"]) * factor))),
                "mlp_ratio": round_up(hidden * factor, self.round_to) / dim}

    def anchors(self) -> list[dict[str, Any]]:
        return [{"vit.dim": self.dim_choices[0], "vit.heads": self.heads[0], "vit.depth": self.depths[0],
                 "vit.mlp_ratio": self.mlp_ratios[0], "vit.patch": max(self.patches)}]
