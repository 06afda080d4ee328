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
from typing import Literal, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .context import Batch, DisWOTSignals, Reference, TeacherContext
from .nets import FeatureMapTap, diswot_init
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


def signals(model: nn.Module, batch: Batch, seed: int, head: Head = "zero") -> DisWOTSignals:
    """The DisWOT signals of a DisWOT-initialised copy of `model` on `batch`, in train mode
    (batch norm uses batch statistics, as at the start of training), run where the batch lies
    (initialised on the CPU first, so the weights are the same on every device). The signals
    come back on the CPU: small matrices, compared with the teacher's wherever it was measured.

    With a zero linear head on pooled features one forward pass without gradients is
    enough (the gradient is analytic); otherwise CE is backpropagated once through a
    copy whose gradients start at None (zeroed)."""
    x, y = batch
    net = diswot_init(copy.deepcopy(model), seed).to(x.device).train()
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
                          extra={"teacher_random_head": signals(teacher, batch, seed, head="random")})


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
