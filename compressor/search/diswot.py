"""DisWOT (Dong, Li, Wei, CVPR 2023): rank students by how alike a random teacher and a
random student see one real batch.

`teacher_context` measures the randomly initialised teacher once per study;
`measure` measures a candidate and returns its (negated) distances to the teacher.
Each network is a fresh deep copy with its own gradients, zeroed before the one
backward pass, so nothing accumulates across candidates (the official code never
zeroes the teacher's gradient, so later candidates were compared with a sum).

One deliberate change from the paper, measured in benchmarks/results/proxy_correlation.md:
the semantic term reads the classifier gradient of a *zero-initialised* classifier.
Under the official N(0, 1) init the logits are large, the softmax is one-hot, and
each class's gradient row is ≈ (times predicted − times present) x the mean feature:
the class Gram then records which classes one random head happens to over-predict,
and its rank correlation with distilled accuracy was ≈ 0. With a zero head the
softmax is uniform and row k is ∝ (mean feature − class-k mean feature): how the
network's features separate the classes, which is the semantic content intended.
The published form stays available as the proxy ``diswot_official``.
"""
from __future__ import annotations

import copy
from typing import Any, Literal, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .context import Batch, DisWOTSignals, Reference, TeacherContext
from ..families import FAMILIES
from .nets import FeatureMapTap, default_init, diswot_init
from .similarity import (
    batch_gram,
    class_activation_maps,
    class_gram,
    gram_distance,
    map_distance,
)

Head = Literal["zero", "random"]


class _HeadWatch:
    """Finds the classifier (the last Conv/Linear to run) during the one forward pass and
    keeps, for every Conv/Linear, its input and the feature map the tap held as it started:
    for the classifier that is the last feature map before pooling."""

    def __init__(self, net: nn.Module, tap: FeatureMapTap) -> None:
        self.tap, self.last = tap, ""
        self.seen: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        if not layers:
            raise ValueError("the network has no Conv or Linear layer to read a classifier from")
        self.hooks = [h for n, m in layers for h in (
            m.register_forward_pre_hook(lambda _m, i, n=n: self.seen.__setitem__(n, (self.tap.feature_map, i[0]))),
            m.register_forward_hook(lambda *_a, n=n: setattr(self, "last", n)))]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _zero_head_gradient(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """∂CE/∂W of a zero linear classifier (softmax uniform): ((1/K − onehot(y))ᵀ h) / B.

    Exactly what backpropagation gives for a mean-reduced CE, without a backward pass."""
    residual = torch.full((len(labels), classes), 1.0 / classes, dtype=features.dtype, device=features.device)
    residual[torch.arange(len(labels), device=labels.device), labels] -= 1.0
    return residual.T @ features.detach() / len(labels)


def signals(model: nn.Module, batch: Batch, seed: int, head: Head = "zero", reinit: bool = True) -> DisWOTSignals:
    """The DisWOT signals of a DisWOT-initialised copy of `model` on `batch`, in train mode
    (batch norm uses batch statistics, as at the start of training), run where the batch lies
    (initialised on the CPU first, so the weights are the same on every device). The signals
    come back on the CPU: small matrices, compared with the teacher's wherever it was measured.

    With a zero linear head on pooled features one forward pass without gradients is
    enough (the gradient is analytic); otherwise CE is backpropagated once through a
    copy whose gradients start at None (zeroed). ``reinit=False`` keeps the weights the
    network has (a trained teacher, a student cut from it)."""
    x, y = batch
    net = copy.deepcopy(model)
    if reinit:
        diswot_init(net, seed)
    net = net.to(x.device).train()
    tap = FeatureMapTap(batch=len(x))
    watch = _HeadWatch(net, tap)
    try:
        with torch.set_grad_enabled(head == "random"), tap:
            logits = net(x)
    finally:
        watch.remove()
    classifier = net.get_submodule(watch.last)
    before, head_input = watch.seen[watch.last]
    if head == "zero" and isinstance(classifier, nn.Linear) and head_input.dim() == 2:
        grad = _zero_head_gradient(head_input, y, classifier.out_features)
    else:
        if head == "zero":  # a conv or token-wise head: zero it and backpropagate
            with torch.no_grad():
                classifier.weight.zero_()
                if classifier.bias is not None:
                    classifier.bias.zero_()
            with torch.enable_grad():
                logits = net(x)
        net.zero_grad(set_to_none=True)
        with torch.enable_grad():
            F.cross_entropy(logits, y).backward()
        if classifier.weight.grad is None:
            raise ValueError("the classifier weight received no gradient")
        grad = classifier.weight.grad
    # no map before the head (an MLP on flat inputs): its input is the last feature there is
    fmap = before if before is not None else head_input
    try:
        cams = class_activation_maps(fmap, grad, y)
    except ValueError:  # a head that does not read the map's channels: no CAM for this network
        cams = None
    return DisWOTSignals(class_gram(grad).cpu(), batch_gram(fmap).cpu(), None if cams is None else cams.cpu())


def teacher_context(teacher: nn.Module, batch: Batch, seed: int = 0,
                    reference: Reference | None = None) -> TeacherContext:
    """The random-init teacher's signals for `batch`, computed once per study."""
    return TeacherContext(seed=seed, batch_size=len(batch[0]), teacher=signals(teacher, batch, seed),
                          reference=reference,
                          extra={"teacher_random_head": signals(teacher, batch, seed, head="random"),
                                 "teacher_trained": signals(teacher, batch, seed, reinit=False),
                                 "teacher_stages": _or_none(stage_grams, teacher, batch, seed)})


def _or_none(fn: Any, *args: Any) -> Any:
    """An optional signal: a teacher without it still serves the proxies that do not read it."""
    try:
        return fn(*args)
    except ValueError:
        return None


def _distances(t: DisWOTSignals, s: DisWOTSignals) -> dict[str, float]:
    return {"diswot_sem": -gram_distance(t.class_gram, s.class_gram),
            "diswot_rel": -gram_distance(t.batch_gram, s.batch_gram)}


def measure(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """``diswot_sem`` = −M_sem and ``diswot_rel`` = −M_rel (higher is more teacher-like)."""
    return _distances(ctx.require_teacher(batch), signals(model, batch, ctx.seed + 1))


def measure_official(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """As published: the semantic term from a N(0, 1) classifier (``diswot_sem_official``)."""
    ctx.require_teacher(batch)
    t = ctx.extra.get("teacher_random_head")
    if t is None:
        raise ValueError("the context has no random-head teacher signals: build it with teacher_context()")
    d = _distances(t, signals(model, batch, ctx.seed + 1, head="random"))
    return {"diswot_sem_official": d["diswot_sem"], "diswot_rel": d["diswot_rel"]}


def measure_cam(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """The class-activation-map variant of the semantic term (``diswot_cam``), with the Gram terms."""
    t = ctx.require_teacher(batch)
    s = signals(model, batch, ctx.seed + 1)
    if t.cam is None or s.cam is None:
        raise ValueError("class-activation maps are unavailable for this teacher or candidate")
    return {"diswot_cam": -map_distance(t.cam, s.cam), **_distances(t, s)}


def measure_inherited(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """DisWOT's two distances between the *trained* teacher and the candidate with the weights it
    starts distillation with (a teacher-derived student keeps the teacher's; a family student
    its own initialisation): ``diswot_inh_sem`` and ``diswot_inh_rel``."""
    ctx.require_teacher(batch)
    t = ctx.extra.get("teacher_trained")
    if t is None:
        raise ValueError("the context has no trained-teacher signals: build it with teacher_context()")
    if isinstance(model, tuple(FAMILIES.values())):  # inherits nothing: a seeded start, not whatever it holds
        model = default_init(copy.deepcopy(model), ctx.seed + 1)
    d = _distances(t, signals(model, batch, ctx.seed + 1, reinit=False))
    return {"diswot_inh_sem": d["diswot_sem"], "diswot_inh_rel": d["diswot_rel"]}


STAGES = (0.25, 0.5, 0.75, 1.0)


def stage_grams(model: nn.Module, batch: Batch, seed: int, reinit: bool = True) -> list[torch.Tensor]:
    """Row-normalised B x B batch Grams of the feature maps at `STAGES` of the network's depth
    (counted in Conv/Linear layers that output a feature map), DisWOT-initialised, train mode."""
    x = batch[0]
    net = copy.deepcopy(model)
    if reinit:
        diswot_init(net, seed)
    net = net.to(x.device).train()
    maps: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 3 and out.shape[0] == len(x):
            maps.append(out.detach())

    hooks = [m.register_forward_hook(keep) for m in net.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    if not maps:
        raise ValueError("the network computes no feature map to compare")
    picks = [maps[min(len(maps) - 1, max(0, round(f * len(maps)) - 1))] for f in STAGES]
    return [batch_gram(m).cpu() for m in picks]


def measure_stages(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
    """``diswot_stages``: minus the mean batch-Gram distance at a quarter, half, three quarters and
    the end of both networks' depth (DisWOT's relation term compares only the last map)."""
    ctx.require_teacher(batch)
    t = ctx.extra.get("teacher_stages")
    if t is None:
        raise ValueError("the context has no per-stage teacher signals: build it with teacher_context()")
    s = stage_grams(model, batch, ctx.seed + 1)
    return {"diswot_stages": -sum(gram_distance(a, b) for a, b in zip(t, s)) / len(t)}
