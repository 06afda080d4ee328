"""DisWOT's two similarities, as pure functions on tensors.

Both compare matrices whose size does not depend on the networks' widths, so a
student of any width (or family) can be compared with the teacher:

- semantic: the K x K *class Gram* of the row-normalised classifier-weight
  gradient g (K classes x C features). Row k of g is what class k asks of the
  features (for a pooled head, class k's Grad-CAM channel weights); ĝĝᵀ holds the
  cosine between every pair of classes' requests. DisWOT's own form compares the
  C x C matrices g_k g_kᵀ, which needs C_T = C_S; the class Gram keeps the same
  information about how classes relate and drops the width. (An alternative, the
  spatial class-activation map, is `class_activation_maps`.)
- relation: the B x B batch Gram of the last feature map, row-normalised (the
  Similarity-Preserving KD loss), width- and resolution-free by construction.

Distances are ‖A − B‖²_F / n² for n x n matrices.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def class_gram(grad: torch.Tensor) -> torch.Tensor:
    """K x K cosine similarities between the rows of the classifier gradient (K x C[...])."""
    g = F.normalize(grad.detach().flatten(1).double(), dim=1)
    return g @ g.T


def batch_gram(features: torch.Tensor) -> torch.Tensor:
    """B x B Gram of the flattened features, each row L2-normalised."""
    a = features.detach().flatten(1).double()
    return F.normalize(a @ a.T, dim=1)


def gram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖A − B‖²_F / n² for two n x n matrices."""
    if a.shape != b.shape or a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"need two square matrices of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(((a - b) ** 2).sum() / a.shape[0] ** 2)


def class_activation_maps(features: torch.Tensor, grad: torch.Tensor, labels: torch.Tensor,
                          grid: int = 4) -> torch.Tensor:
    """Each sample's map for its own class, Σ_c g[y, c]·f_c, pooled to a common grid, L2-normalised.

    `features` is B x C x H x W, B x C x L, or tokens B x T x C (a square token count
    is laid out as a square image). Returns B x grid² (2-D) or B x grid² (1-D, pooled
    to grid² positions), so teachers and students of any resolution compare.
    """
    g = grad.detach().flatten(1).double()
    f = features.detach().double()
    c = g.shape[1]
    if f.shape[1] != c and f.shape[-1] == c:  # tokens: channels last
        f = f.transpose(1, 2)
        side = math.isqrt(f.shape[-1])
        if side * side == f.shape[-1] and side > 1:
            f = f.reshape(*f.shape[:2], side, side)
    if f.shape[1] != c:
        raise ValueError(f"feature map {tuple(features.shape)} does not have the classifier's {c} channels")
    cam = torch.einsum("bc...,bc->b...", f, g[labels])
    if cam.dim() == 3:
        cam = F.adaptive_avg_pool2d(cam.unsqueeze(1), grid).flatten(1)
    else:
        cam = F.adaptive_avg_pool1d(cam.unsqueeze(1), grid * grid).flatten(1)
    return F.normalize(cam, dim=1)


def map_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared distance between matching rows of two B x S maps."""
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    return float(((a - b) ** 2).sum() / a.shape[0])
