"""Training-free proxies by name: the contract, the registry and the ensemble.

Contract: ``proxy(model, batch, teacher_ctx) -> float``; higher is better; the same
for the same seed; the model's weights are left untouched; one or two batches.

A proxy is measured in raw *terms* (``measure``) and then scored (``score``). One
term is its own score. Several terms (DisWOT's semantic and relation distances, an
ensemble's members) differ in scale, so each is first normalised against a
`Reference` pool and the weighted mean is the score. Keeping the raw terms lets a
study record them per trial and a benchmark re-normalise them across any pool.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from torch import nn

from ..registry import Registry
from . import diswot, zero_cost
from .context import Batch, Reference, TeacherContext

MeasureFn = Callable[[nn.Module, Batch, TeacherContext], Mapping[str, float]]


@dataclass(frozen=True)
class Proxy:
    """A training-free score. `weights` names the terms the score combines."""

    name: str
    measure: MeasureFn
    weights: Mapping[str, float]
    needs_teacher: bool = False
    description: str = ""

    def score(self, terms: Mapping[str, float], reference: Reference | None) -> float:
        """One term: its raw value. Several: the weighted mean of the terms normalised
        against `reference` (without one, raw values are averaged; the largest term then
        dominates, which is why studies always pass a reference)."""
        if len(self.weights) == 1:
            (term,) = self.weights
            return float(terms[term])
        norm = reference.normalise if reference is not None else (lambda _t, v: float(v))
        total = sum(self.weights.values())
        return float(sum(w * norm(t, terms[t]) for t, w in self.weights.items()) / total)

    def __call__(self, model: nn.Module, batch: Batch, ctx: TeacherContext) -> float:
        value = self.score(self.measure(model, batch, ctx), ctx.reference)
        if not math.isfinite(value):
            raise ValueError(f"proxy {self.name} is not finite ({value}) for this network")
        return value


PROXIES: Registry[Proxy] = Registry("proxy")


def register_proxy(proxy: Proxy) -> Proxy:
    PROXIES.add(proxy.name, proxy)
    return proxy


def _single(name: str, fn: MeasureFn, description: str) -> Proxy:
    return register_proxy(Proxy(name, fn, {name: 1.0}, description=description))


_single("params", zero_cost.params, "parameter count (size baseline)")
_single("macs", zero_cost.macs, "multiply-accumulates per sample (size baseline)")
_single("grad_norm", zero_cost.grad_norm, "Σ ‖∂L/∂W‖₂ over Conv/Linear weights")
_single("snip", zero_cost.snip, "Σ |∂L/∂W ⊙ W|")
_single("synflow", zero_cost.synflow, "log SynFlow: BN off, |W|, float64, all-ones input")
_single("naswot", zero_cost.naswot, "log|det K| of binary ReLU codes")
_single("zico", zero_cost.zico, "Σ log Σ mean|g|/std(g) over two half batches")
_single("meco", zero_cost.meco, "Σ λ_min of channel correlations of one sample's feature maps")
_single("swap", zero_cost.swap, "log count of distinct sample-wise activation patterns (SWAP)")
register_proxy(Proxy("diswot", diswot.measure, {"diswot_sem": 1.0, "diswot_rel": 1.0}, needs_teacher=True,
                     description="DisWOT: −(norm M_sem + norm M_rel), class-Gram semantic term, zero-init head"))
register_proxy(Proxy("diswot_official", diswot.measure_official, {"diswot_sem_official": 1.0, "diswot_rel": 1.0},
                     needs_teacher=True, description="DisWOT with the semantic term of a N(0, 1) head, as published"))
register_proxy(Proxy("diswot_cam", diswot.measure_cam, {"diswot_cam": 1.0, "diswot_rel": 1.0}, needs_teacher=True,
                     description="DisWOT with a class-activation-map semantic term"))
register_proxy(Proxy("diswot_inherited", diswot.measure_inherited, {"diswot_inh_sem": 1.0, "diswot_inh_rel": 1.0},
                     needs_teacher=True,
                     description="DisWOT between the trained teacher and the candidate as distillation starts it"))
register_proxy(Proxy("diswot_stages", diswot.measure_stages, {"diswot_stages": 1.0}, needs_teacher=True,
                     description="batch-Gram distance at 4 depths of random teacher and candidate"))
register_proxy(Proxy("diswot_sem", diswot.measure, {"diswot_sem": 1.0}, needs_teacher=True,
                     description="DisWOT semantic term alone (−M_sem)"))
register_proxy(Proxy("diswot_rel", diswot.measure, {"diswot_rel": 1.0}, needs_teacher=True,
                     description="DisWOT relation term alone (−M_rel)"))


def ensemble(members: Sequence[str], name: str | None = None) -> Proxy:
    """Rank-average of `members`: each member's terms normalised against the reference pool,
    every member weighing the same whatever its number of terms."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members but got {list(members)}.")
    parts = [PROXIES.get(m) for m in members]
    weights: dict[str, float] = {}
    for p in parts:
        for term, w in p.weights.items():
            weights[term] = weights.get(term, 0.0) + w / sum(p.weights.values())
    measures = list({p.measure: None for p in parts})  # diswot_sem and diswot_rel share one pass

    def measure(model: nn.Module, batch: Batch, ctx: TeacherContext) -> Mapping[str, float]:
        terms: dict[str, float] = {}
        for fn in measures:
            terms.update(fn(model, batch, ctx))
        return terms

    return Proxy(name or "+".join(members), measure, weights,
                 needs_teacher=any(p.needs_teacher for p in parts),
                 description="rank-average of " + ", ".join(members))


# DisWOT (teacher-likeness), SNIP (trainability) and size, rank-averaged: the best mean rank
# correlation with distilled accuracy of all proxies measured, and above params in 3 of 4 student
# pools (DisWOT alone: in none). See benchmarks/results/proxy_correlation.md.
register_proxy(ensemble(("diswot", "snip", "params"), name="ensemble"))


def get_proxy(name: str) -> Proxy:
    """A registered proxy, or an ad-hoc ensemble written ``a+b+c`` (e.g. ``diswot+synflow``)."""
    if "+" in name:
        return ensemble([m.strip() for m in name.split("+") if m.strip()], name=name)
    return PROXIES.get(name)
