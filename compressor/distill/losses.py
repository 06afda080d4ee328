"""Distillation losses: one contract, selectable by name.

Every loss is an `nn.Module` with ``forward(student: Out, teacher: Out) -> scalar``.
It is built from one *probe* output of each network (``cls(student_probe,
teacher_probe, **kwargs)``) so that losses with learned adapters (FitNets,
the inter-channel loss) can size them before the optimizer is created; their
adapters are ordinary trainable parameters of the loss module. The teacher's
side is always detached inside the loss: gradients reach the student and the
adapters only.

`minimizer(teacher)` returns a student output at which the loss is zero; the
contract tests use it. For most losses that is the teacher's own output; for
Transformed Teacher Matching it is the teacher's logits divided by T.

Built-ins (`LOSSES.names()`): kd, fitnets, rkd, sp, diswot_semantic, ttm, dkd.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["Out", "DistillLoss", "LOSSES", "build_loss", "kd_kl"]


@dataclass(frozen=True)
class Out:
    """What a loss sees of one network on one batch.

    `features` is the last feature map before global pooling, channels in
    dim 1: (B, C, *spatial); where a network exposes no such map it is the
    pooled embedding fed to the classifier, (B, C). Teacher and student maps
    may differ in width and resolution; each loss says how it copes.
    """

    logits: Tensor
    features: Tensor | None = None
    labels: Tensor | None = None

    def detach(self) -> "Out":
        return Out(self.logits.detach(), None if self.features is None else self.features.detach(), self.labels)


class DistillLoss(nn.Module):
    """Base class: `forward(student, teacher) -> scalar`; the teacher side is detached."""

    needs_features: ClassVar[bool] = False

    def __init__(self, student: Out | None = None, teacher: Out | None = None) -> None:
        super().__init__()

    def minimizer(self, teacher: Out) -> Out:
        """A student output at which this loss is zero."""
        return teacher

    def forward(self, student: Out, teacher: Out) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss")


def build_loss(name: str, student: Out, teacher: Out, **kwargs: Any) -> DistillLoss:
    """Instantiate loss `name` for networks whose outputs look like the two probes."""
    cls = LOSSES.get(name)
    if cls.needs_features and (student.features is None or teacher.features is None):
        side = "student" if student.features is None else "teacher"
        raise ConfigError(f"loss {name!r} needs feature maps, but the {side} exposes none")
    try:
        return cls(student, teacher, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for loss {name!r}: {e}") from None


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), batch mean. The τ² keeps the soft-target
    gradient on the scale of the hard-label one as τ grows (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits.detach() / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)


def _labels(student: Out, teacher: Out) -> Tensor:
    if teacher.labels is not None:
        return teacher.labels
    if student.labels is not None:
        return student.labels
    return teacher.logits.argmax(1)


def _as_bcn(f: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, C, N); a pooled (B, C) embedding has N = 1."""
    return f.reshape(f.shape[0], f.shape[1], -1)


def _pooled(f: Tensor) -> Tensor:
    return _as_bcn(f).mean(2)


def _embedding(out: Out) -> Tensor:
    """Relational losses compare samples: use the features where there are some, else logits."""
    return out.logits if out.features is None else out.features


def _identity_init(layer: nn.Linear | nn.modules.conv._ConvNd) -> None:
    """A same-width adapter starts as the identity, so an already matching student is not penalised."""
    with torch.no_grad():
        layer.weight.copy_(torch.eye(layer.weight.shape[0]).view_as(layer.weight))  # 1x1 kernel: C*C entries
        if layer.bias is not None:
            layer.bias.zero_()


def _adapter(c_in: int, c_out: int, spatial_rank: int) -> nn.Module:
    """1x1 convolution over a feature map, or a linear layer over a pooled embedding."""
    if spatial_rank == 0:
        layer: nn.Module = nn.Linear(c_in, c_out)
    else:
        layer = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_rank](c_in, c_out, 1)
    if c_in == c_out:
        _identity_init(layer)
    return layer


# ------------------------------------------------------------------------- logit losses

@LOSSES.register("kd")
class HintonKD(DistillLoss):
    """Hinton et al. 2015: τ²·KL between temperature-softened distributions (τ = 4)."""

    def __init__(self, student: Out | None = None, teacher: Out | None = None, *, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student: Out, teacher: Out) -> Tensor:
        return kd_kl(student.logits, teacher.logits, self.temperature)


@LOSSES.register("ttm")
class TransformedTeacherMatching(DistillLoss):
    """Zheng & Yang 2024 (TTM): temperature on the teacher only, KL(softmax(t/T) ‖ softmax(s)).

    Dropping the student's temperature turns KD into matching a power-transformed
    teacher, which the paper shows adds a Rényi-entropy regulariser on the
    student. Zero where softmax(s) = softmax(t/T), i.e. s = t/T."""

    def __init__(self, student: Out | None = None, teacher: Out | None = None, *, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def minimizer(self, teacher: Out) -> Out:
        return replace(teacher, logits=teacher.logits / self.temperature)

    def forward(self, student: Out, teacher: Out) -> Tensor:
        target = F.log_softmax(teacher.logits.detach() / self.temperature, 1)
        return F.kl_div(F.log_softmax(student.logits, 1), target, reduction="batchmean", log_target=True)


@LOSSES.register("dkd")
class DecoupledKD(DistillLoss):
    """Zhao et al. 2022 (DKD): KD split into target-class (TCKD) and non-target (NCKD) terms.

    Classic KD weights NCKD by (1 − p_target of the teacher), which suppresses it
    exactly when the teacher is confident; DKD weights the two freely
    (α = 1, β = 8 on CIFAR-100 in the paper). Labels come from the outputs or,
    failing that, the teacher's prediction."""

    def __init__(self, student: Out | None = None, teacher: Out | None = None, *, alpha: float = 1.0,
                 beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def forward(self, student: Out, teacher: Out) -> Tensor:
        t = self.temperature
        s_logits, t_logits = student.logits, teacher.logits.detach()
        gt = F.one_hot(_labels(student, teacher), s_logits.shape[1]).bool()
        p_s, p_t = F.softmax(s_logits / t, 1), F.softmax(t_logits / t, 1)
        # binary (target, rest) distributions
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1).clamp_min(1e-12)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1).clamp_min(1e-12)
        tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean")
        # distributions over the non-target classes only (target logit pushed to -inf)
        mask = gt.to(s_logits.dtype) * 1e4
        nckd = F.kl_div(F.log_softmax(s_logits / t - mask, 1), F.log_softmax(t_logits / t - mask, 1),
                        reduction="batchmean", log_target=True)
        return (self.alpha * tckd + self.beta * nckd) * t * t


# ----------------------------------------------------------------------- feature losses

@LOSSES.register("fitnets")
class FitNets(DistillLoss):
    """Romero et al. 2015: regress the teacher's features from the student's through a
    learned adapter (1x1 conv on maps of equal resolution, else linear on pooled features)."""

    needs_features = True

    def __init__(self, student: Out | None = None, teacher: Out | None = None) -> None:
        super().__init__()
        if student is None or teacher is None or student.features is None or teacher.features is None:
            raise ConfigError("fitnets needs student and teacher feature probes")
        fs, ft = student.features, teacher.features
        self.spatial = fs.shape[2:] == ft.shape[2:]  # same resolution: a per-position hint
        rank = fs.dim() - 2 if self.spatial else 0
        self.adapter = _adapter(fs.shape[1], ft.shape[1], rank)

    def forward(self, student: Out, teacher: Out) -> Tensor:
        fs, ft = student.features, teacher.features.detach()
        if not self.spatial:
            fs, ft = _pooled(fs), _pooled(ft)
        return F.mse_loss(self.adapter(fs), ft)


@LOSSES.register("sp")
class SimilarityPreserving(DistillLoss):
    """Tung & Mori 2019: match the row-normalised batch Gram matrices (B×B) of the
    flattened features, ‖Ĝ_s − Ĝ_t‖²_F / B². Width- and resolution-free; the same
    measure is DisWOT's relation similarity."""

    def forward(self, student: Out, teacher: Out) -> Tensor:
        a_s = _embedding(student).flatten(1)
        a_t = _embedding(teacher).detach().flatten(1)
        g_s = F.normalize(a_s @ a_s.t(), dim=1)
        g_t = F.normalize(a_t @ a_t.t(), dim=1)
        return (g_s - g_t).pow(2).sum() / a_s.shape[0] ** 2


@LOSSES.register("rkd")
class RelationalKD(DistillLoss):
    """Park et al. 2019: match pairwise distances (normalised by their mean) and
    triplet angles between samples' pooled embeddings, with Huber loss;
    weights 1 (distance) and 2 (angle) as in the paper."""

    def __init__(self, student: Out | None = None, teacher: Out | None = None, *, distance: float = 1.0,
                 angle: float = 2.0) -> None:
        super().__init__()
        self.w_distance, self.w_angle = float(distance), float(angle)

    @staticmethod
    def _distances(e: Tensor) -> Tensor:
        sq = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(-1)
        d = sq.clamp_min(1e-12).sqrt() * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))
        positive = d[d > 0]
        return d / positive.mean() if positive.numel() else d

    @staticmethod
    def _angles(e: Tensor) -> Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, C): e_i - e_j, unit length
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of angle at j between i and k

    def forward(self, student: Out, teacher: Out) -> Tensor:
        e_s = _embedding(student)
        e_t = _embedding(teacher).detach()
        e_s = _pooled(e_s) if e_s.dim() > 2 else e_s
        e_t = _pooled(e_t) if e_t.dim() > 2 else e_t
        loss = self.w_distance * F.smooth_l1_loss(self._distances(e_s), self._distances(e_t))
        if self.w_angle:
            loss = loss + self.w_angle * F.smooth_l1_loss(self._angles(e_s), self._angles(e_t))
        return loss


@LOSSES.register("diswot_semantic")
class InterChannelCorrelation(DistillLoss):
    """ICKD (Liu et al. 2021) / DisWOT semantic: match inter-channel correlation.

    The student's features are mapped to the teacher's width by a learned 1x1
    adapter (identity when widths agree), then each sample's C×C Gram over
    spatial positions is row-normalised and compared: Σ‖Ĝ_s − Ĝ_t‖²_F / (B·C).
    A pooled (B, C) embedding has one position per sample, so its correlation
    is taken over the batch instead (one C×C Gram)."""

    needs_features = True

    def __init__(self, student: Out | None = None, teacher: Out | None = None) -> None:
        super().__init__()
        if student is None or teacher is None or student.features is None or teacher.features is None:
            raise ConfigError("diswot_semantic needs student and teacher feature probes")
        self.adapter = _adapter(student.features.shape[1], teacher.features.shape[1], 0)

    def _gram(self, f: Tensor) -> Tensor:
        x = _as_bcn(f)
        if x.shape[2] == 1:  # no spatial positions: correlate channels across the batch
            x = x.squeeze(2).t().unsqueeze(0)
        return F.normalize(x @ x.transpose(1, 2), dim=2)

    def forward(self, student: Out, teacher: Out) -> Tensor:
        fs = _as_bcn(student.features)
        fs = self.adapter(fs.transpose(1, 2)).transpose(1, 2)  # 1x1 conv == linear over channels
        g_s, g_t = self._gram(fs), self._gram(teacher.features.detach())
        return (g_s - g_t).pow(2).sum() / (g_s.shape[0] * g_s.shape[1])

