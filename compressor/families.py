"""Student families that do not depend on the teacher's code.

A student can differ from its teacher in kind (DisWOT): these families are
built from a JSON architecture alone, for inputs of shape (L,), (C, L) or
(C, H, W). Both are written so Torch-Pruning's dependency graph sees real
layers and the nested dimensions are coupled correctly:

- `cnn`: stages of [conv-bn-relu] blocks with a residual add where shapes
  match, a stride-2 transition between stages, global pooling and a linear head.
- `transformer`: a patch embedding, pre-norm blocks of multi-head attention and
  an MLP, mean pooling and a linear head. The nested dimensions are the MLP
  hidden width (a plain Linear->GELU->Linear group) and the attention heads;
  the embedding width is not nested, since layer norm over a masked width is
  not the norm of the cut width.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError


def _spatial_rank(shape: tuple[int, ...]) -> int:
    return max(1, len(shape) - 1)


def _as_channels_first(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    # a 1-D signal of shape (L,) becomes (1, L): one input channel
    return x.unsqueeze(1) if len(shape) == 1 else x


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, dims: int, padding: int | None = None) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        padding = kernel // 2 if padding is None else padding
        self.conv = conv(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        return y + x if self.residual else y


class CNNFamily(nn.Module):
    """arch: {"family": "cnn", "widths": [w per stage], "depths": [n per stage], "kernel": k[, "stem": s]}

    ``stem`` is the stride of the first block (default 1). A stride-2 stem is how mobile
    networks afford depth under a small budget: every later stage runs on a quarter of the
    pixels, and the receptive field the head pools over doubles. A stride-4 stem is a
    *patchify* layer (kernel 4, stride 4, no padding: ConvNeXt's stem, a ViT's patch
    embedding): every input pixel is read once, and the network runs on a sixteenth of the
    pixels, which is what buys width under budgets of a few tens of microseconds.
    """

    def __init__(self, arch: Mapping[str, Any], in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        dims = _spatial_rank(self.in_shape)
        cin = 1 if len(self.in_shape) == 1 else self.in_shape[0]
        widths, depths, kernel = list(arch["widths"]), list(arch["depths"]), int(arch.get("kernel", 3))
        stem = int(arch.get("stem", 1))
        if len(widths) != len(depths) or not widths:
            raise ConfigError(f"cnn arch needs widths and depths of equal length, got {arch}")
        if stem not in (1, 2, 4):
            raise ConfigError(f"cnn arch 'stem' must be 1, 2 or 4, got {stem}")
        blocks: list[nn.Module] = []
        for stage, (w, d) in enumerate(zip(widths, depths)):
            for i in range(int(d)):
                stride = (2 if stage > 0 else stem) if i == 0 else 1
                if stage == 0 and i == 0 and stem == 4:  # patchify: non-overlapping 4x4 patches
                    blocks.append(ConvBlock(cin, int(w), 4, 4, dims, padding=0))
                else:
                    blocks.append(ConvBlock(cin, int(w), kernel, stride, dims))
                cin = int(w)
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(_as_channels_first(x, self.in_shape))
        return self.head(torch.flatten(self.pool(f), 1))


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections.

    Written out with matmul/softmax (not a fused kernel) so that the graph is
    plain for export and for Torch-Pruning; heads are cut by `keep_heads`.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).reshape(b, t, -1, self.head_dim).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, t, -1)
        return self.proj(out)

    @torch.no_grad()
    def keep_heads(self, heads: list[int]) -> None:
        """Physically keep only `heads` (indices), in the given order."""
        idx = torch.cat([torch.arange(h * self.head_dim, (h + 1) * self.head_dim) for h in heads])
        for lin in (self.q, self.k, self.v):
            lin.weight = nn.Parameter(lin.weight[idx].clone())
            lin.bias = nn.Parameter(lin.bias[idx].clone())
            lin.out_features = len(idx)
        self.proj.weight = nn.Parameter(self.proj.weight[:, idx].clone())
        self.proj.in_features = len(idx)
        self.heads = len(heads)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerFamily(nn.Module):
    """arch: {"family": "transformer", "depth", "dim", "heads", "mlp_ratio", "patch"[, "head_dim"]}"""

    def __init__(self, arch: Mapping[str, Any], in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        dims = _spatial_rank(self.in_shape)
        cin = 1 if len(self.in_shape) == 1 else self.in_shape[0]
        dim, heads = int(arch["dim"]), int(arch["heads"])
        patch = int(arch.get("patch", 4))
        # optional "head_dim": a wider (more heads) version of a network keeps its head width,
        # so the narrower one nests inside it as a prefix of whole heads
        head_dim = int(arch.get("head_dim", 0)) or dim // heads
        if "head_dim" not in arch and dim % heads:
            raise ConfigError(f"transformer dim {dim} is not divisible by heads {heads}")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.embed = conv(cin, dim, patch, stride=patch)
        n_tokens = math.prod(s // patch for s in self.in_shape[-dims:])
        if n_tokens < 1:
            raise ConfigError(f"patch {patch} is larger than the input {self.in_shape}")
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        hidden = int(round(dim * float(arch.get("mlp_ratio", 2.0))))
        self.blocks = nn.Sequential(*[Block(dim, heads, head_dim, hidden)
                                      for _ in range(int(arch["depth"]))])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(_as_channels_first(x, self.in_shape)).flatten(2).transpose(1, 2)
        t = self.blocks(t + self.pos)
        return self.head(self.norm(t).mean(1))


FAMILIES = {"cnn": CNNFamily, "transformer": TransformerFamily}


def build_family(arch: Mapping[str, Any], in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a family student from its JSON architecture; deterministic under a seed."""
    family = arch.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"unknown student family {family!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[family](arch, tuple(in_shape), num_classes)
