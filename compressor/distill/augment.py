"""Batch augmentation shared by the teacher and every student on a step.

Distillation works best when teacher and student see the *same* augmented
view ("consistent teaching", Beyer et al. 2022): the teacher is then run on
each batch rather than cached, and the nested run shares that one teacher pass
between all its sizes, where independent students each pay for their own.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["AUGMENTS", "augment"]

AUGMENTS = ("none", "shift")


def augment(x: Tensor, kind: str, shift: int, generator: torch.Generator) -> Tensor:
    if kind == "none" or shift <= 0:
        return x
    if kind == "shift":
        return random_shift(x, shift, generator)
    raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(AUGMENTS)})")


def random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Translate each sample by up to `shift` positions along every spatial axis, edges replicated.

    Inputs are (B, L) signals, (B, C, L) or (B, C, H, W); a 2-D batch is one
    channel of 1-D signals (families.py reads (L,) inputs the same way)."""
    flat = x.dim() == 2
    y = x.unsqueeze(1) if flat else x
    spatial = y.dim() - 2
    if spatial not in (1, 2):
        raise ValueError(f"shift augmentation needs 1-D or 2-D samples, got shape {tuple(x.shape[1:])}")
    padded = F.pad(y, [shift] * (2 * spatial), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (len(x), spatial), generator=generator).tolist()
    size = y.shape[2:]
    crops = [padded[i, ..., o[0]:o[0] + size[0]] if spatial == 1 else
             padded[i, ..., o[0]:o[0] + size[0], o[1]:o[1] + size[1]] for i, o in enumerate(offsets)]
    out = torch.stack(crops)
    return out.squeeze(1) if flat else out
