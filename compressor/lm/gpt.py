"""GPT-2-family nesting: one set of weights, many sizes (MatFormer / MatTA for decoders).

A size is a `Shape`: `layers` blocks, in each the first `heads` attention heads (whole heads)
and the first `ffn` FFN neurons. The residual width (`n_embd`) stays whole, so layer norms keep
their meaning at every size (METHODS.md §6). Prefixes only keep the most important units
because `sort_by_importance` first permutes each layer's heads and FFN neurons by their
activation on real text (Minitron); those permutations leave the teacher's function unchanged.
Blocks cannot be permuted (they run in order), so which blocks a size keeps is a list in the
config instead (`LAYER_ORDER`, most important first; `kept_layers`): a size of `layers` blocks
runs the first `layers` of that list in their original order, so every size's blocks contain
every smaller size's. Without the list, the first blocks.

`nested_forward` runs any size on the shared weights (training); `dense_model` cuts a size
out as a real, smaller `GPT2LMHeadModel` (config updated, heads pruned with transformers'
own `prune_heads`) whose outputs equal `nested_forward`'s.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LAYER_ORDER", "LogitsOnly", "Shape", "dense_model", "full_shape", "kept_layers", "macs_per_token",
           "nested_forward", "scaled_shape", "SHAPE_RULES", "sort_by_importance"]

# the config key (saved in config.json with the family) listing the blocks most important first
LAYER_ORDER = "nested_layer_order"


@dataclass(frozen=True, order=True)
class Shape:
    """One nested size: a prefix of layers, of attention heads per layer, of FFN neurons per layer."""

    layers: int
    heads: int
    ffn: int

    def nests_in(self, other: "Shape") -> bool:
        return self.layers <= other.layers and self.heads <= other.heads and self.ffn <= other.ffn

    def to_dict(self) -> dict[str, int]:
        return {"layers": self.layers, "heads": self.heads, "ffn": self.ffn}


def _ffn_width(config: Any) -> int:
    return config.n_inner if config.n_inner is not None else 4 * config.n_embd


def full_shape(model: nn.Module) -> Shape:
    c = model.config
    return Shape(c.n_layer, c.n_head, _ffn_width(c))


def kept_layers(config: Any, layers: int) -> list[int]:
    """The blocks a size of `layers` blocks runs, in execution order: the first `layers` of the
    config's `LAYER_ORDER` (the first blocks where it has none)."""
    order = getattr(config, LAYER_ORDER, None) or list(range(config.n_layer))
    return sorted(order[:layers])


# how a compute ratio becomes a shape; the pipeline plans with "balanced", "width" is measured beside
# it (BENCHMARKS.md "Language models: nesting width alone")
SHAPE_RULES = ("balanced", "width")


def scaled_shape(full: Shape, ratio: float, round_to: int = 8, rule: str = "balanced") -> Shape:
    """The size that costs about `ratio` of `full` per token.

    `balanced`: depth and width each scale by sqrt(ratio), so layers x width (what the blocks'
    MACs follow) scales by `ratio`. `width`: every block kept, heads and FFN scaled by `ratio`
    (MatFormer and Flextron nest width only): nested sizes then share every block, so each step
    of any size trains weights every other size runs."""
    if rule not in SHAPE_RULES:
        raise ValueError(f"unknown shape rule {rule!r}; one of {', '.join(SHAPE_RULES)}")
    r = max(min(ratio, 1.0), 1e-6)
    depth, width = (1.0, r) if rule == "width" else (math.sqrt(r), math.sqrt(r))
    ffn = max(round_to, int(round(full.ffn * width / round_to)) * round_to)
    return Shape(layers=max(1, min(full.layers, round(full.layers * depth))),
                 heads=max(1, min(full.heads, round(full.heads * width))), ffn=min(full.ffn, ffn))


def macs_per_token(config: Any, shape: Shape, context: int) -> int:
    """Multiply-adds for one token at `context` tokens of attention: the projections, the
    attention itself, and the LM head (which the vocabulary, not the shape, decides)."""
    d, hd = config.n_embd, config.n_embd // config.n_head
    inner = shape.heads * hd
    per_layer = d * 3 * inner + inner * d + 2 * context * inner + 2 * d * shape.ffn
    return shape.layers * per_layer + d * config.vocab_size


# ----------------------------------------------------------------------------- importance order

@torch.no_grad()
def sort_by_importance(model: nn.Module, ids: torch.Tensor) -> nn.Module:
    """A copy of `model` with each layer's heads and FFN neurons in falling order of importance.

    Importance is the mean activation magnitude on `ids` (Minitron): a head's output norm before
    the output projection, a neuron's |activation|. Heads and neurons of a layer are summed in
    any order, so the permuted model computes exactly what `model` does. The blocks' order of
    importance goes into the config (`LAYER_ORDER`, `layer_order`)."""
    model = copy.deepcopy(model).eval()
    c = model.config
    hd = c.n_embd // c.n_head
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for i, blk in enumerate(model.transformer.h):
        def head_hook(_m: nn.Module, args: tuple, i: int = i) -> None:
            x = args[0]  # (B, T, heads*hd): the heads' outputs, side by side
            stats[f"h{i}"] = x.reshape(*x.shape[:-1], -1, hd).norm(dim=-1).mean(dim=(0, 1))

        def ffn_hook(_m: nn.Module, _args: tuple, out: torch.Tensor, i: int = i) -> None:
            stats[f"f{i}"] = out.abs().mean(dim=(0, 1))
        hooks += [blk.attn.c_proj.register_forward_pre_hook(head_hook), blk.mlp.act.register_forward_hook(ffn_hook)]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    d = c.n_embd
    for i, blk in enumerate(model.transformer.h):
        heads = torch.argsort(stats[f"h{i}"], descending=True, stable=True)
        cols = torch.cat([(heads[:, None] * hd + torch.arange(hd)).flatten() + k * d for k in range(3)])
        blk.attn.c_attn.weight.copy_(blk.attn.c_attn.weight[:, cols])
        blk.attn.c_attn.bias.copy_(blk.attn.c_attn.bias[cols])
        rows = (heads[:, None] * hd + torch.arange(hd)).flatten()
        blk.attn.c_proj.weight.copy_(blk.attn.c_proj.weight[rows])
        neurons = torch.argsort(stats[f"f{i}"], descending=True, stable=True)
        blk.mlp.c_fc.weight.copy_(blk.mlp.c_fc.weight[:, neurons])
        blk.mlp.c_fc.bias.copy_(blk.mlp.c_fc.bias[neurons])
        blk.mlp.c_proj.weight.copy_(blk.mlp.c_proj.weight[neurons])
    setattr(c, LAYER_ORDER, layer_order(model, ids))
    return model


@torch.no_grad()
def layer_order(model: nn.Module, ids: torch.Tensor) -> list[int]:
    """`model`'s blocks, most important first, by greedy removal: the block whose removal raises
    the next-token loss on `ids` least goes first, then the same among those left (depth pruning
    by loss, as Minitron and ShortGPT rank layers). Removal order, reversed, makes the sets nest:
    the blocks kept at any depth include those kept at every smaller depth. A prefix of blocks
    instead would ask a small size's last block both to finish the prediction and to feed the
    blocks that larger sizes run after it; a late block that refines the output is usually worth
    more to every size than a middle one."""
    model = model.eval()
    kept, dropped = list(range(model.config.n_layer)), []
    while len(kept) > 1:
        loss = {i: float(F.cross_entropy(_forward(model, ids[:, :-1], [k for k in kept if k != i], None)
                                         .flatten(0, 1), ids[:, 1:].flatten())) for i in kept}
        least = min(kept, key=lambda i: (loss[i], -i))  # ties: the later block goes first
        kept.remove(least)
        dropped.append(least)
    return kept + dropped[::-1]


# ----------------------------------------------------------------------------- nested forward

def _qkv_columns(d: int, hd: int, heads: int) -> torch.Tensor:
    """Columns of GPT-2's fused c_attn (q | k | v, each `d` wide) that the first `heads` heads use."""
    keep = torch.arange(heads * hd)
    return torch.cat([keep, keep + d, keep + 2 * d])


def nested_forward(model: nn.Module, ids: torch.Tensor, shape: Shape | None = None) -> torch.Tensor:
    """Next-token logits (B, T, vocab) of the size `shape` on `model`'s shared weights
    (default: all of `model`, also when `dense_model` already cut it).

    GPT-2's block, written out so a size is a slice of each weight: gradients of every size
    reach the same parameters (one optimizer step trains the whole family). It is also what
    the ONNX exporter traces (`LogitsOnly`): transformers' mask building does not trace."""
    c = model.config
    if shape is None:
        return _forward(model, ids, list(range(c.n_layer)), None)
    return _forward(model, ids, kept_layers(c, shape.layers), shape)


def _forward(model: nn.Module, ids: torch.Tensor, blocks: list[int], shape: Shape | None) -> torch.Tensor:
    """Logits through the blocks `blocks`, each cut to `shape`'s heads and FFN (None: whole)."""
    c, tr = model.config, model.transformer
    hd = c.n_embd // c.n_head
    shape = shape or Shape(len(blocks), tr.h[0].attn.num_heads, _ffn_width(c))
    # no Python ints from ids.shape below: the ONNX trace keeps batch and sequence dynamic
    x = tr.drop(tr.wte(ids) + tr.wpe.weight[:ids.shape[1]])
    inner = shape.heads * hd
    for blk in (tr.h[i] for i in blocks):
        split = blk.attn.split_size  # q, k and v are each this wide in c_attn (narrower once heads were pruned)
        w, bias = blk.attn.c_attn.weight, blk.attn.c_attn.bias
        if inner != split:
            cols = _qkv_columns(split, hd, shape.heads).to(ids.device)
            w, bias = w[:, cols], bias[cols]
        qkv = (blk.ln_1(x) @ w + bias).unflatten(-1, (3, shape.heads, hd))  # (B, T, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hd), as GPT-2
        o = o.transpose(1, 2).flatten(2)
        x = x + blk.attn.resid_dropout(o @ blk.attn.c_proj.weight[:inner] + blk.attn.c_proj.bias)
        h = blk.mlp.act(blk.ln_2(x) @ blk.mlp.c_fc.weight[:, :shape.ffn] + blk.mlp.c_fc.bias[:shape.ffn])
        x = x + blk.mlp.dropout(h @ blk.mlp.c_proj.weight[:shape.ffn] + blk.mlp.c_proj.bias)
    return model.lm_head(tr.ln_f(x))


class LogitsOnly(nn.Module):
    """`input_ids` (batch, sequence) -> `logits` (batch, sequence, vocab): what the ONNX file serves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode, recursively: it must be eval already

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nested_forward(self.model, input_ids)


# ----------------------------------------------------------------------------- dense sizes

@torch.no_grad()
def dense_model(model: nn.Module, shape: Shape) -> nn.Module:
    """`shape` cut out of `model` as a real GPT2LMHeadModel: fewer blocks (`n_layer`: those
    `kept_layers` names, renumbered), a narrower FFN (`n_inner`), and whole heads removed with
    transformers' `prune_heads` (recorded in the config's `pruned_heads`, so `from_pretrained`
    rebuilds it)."""
    full = full_shape(model)
    if not shape.nests_in(full) or min(shape.layers, shape.heads, shape.ffn) < 1:
        raise ValueError(f"size {shape} does not nest in {full}")
    config = copy.deepcopy(model.config)
    config.n_layer, config.n_inner = shape.layers, shape.ffn
    config.pruned_heads = {}
    if hasattr(config, LAYER_ORDER):  # the dense model runs all its blocks
        delattr(config, LAYER_ORDER)
    small = type(model)(config)
    renumber = {old: new for new, old in enumerate(kept_layers(model.config, shape.layers))}
    sd = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if len(parts) > 2 and parts[1] == "h":
            if int(parts[2]) not in renumber:
                continue
            k = ".".join([*parts[:2], str(renumber[int(parts[2])]), *parts[3:]])
            name = ".".join(parts[3:])
            if name == "mlp.c_fc.weight":
                v = v[:, :shape.ffn]
            elif name == "mlp.c_fc.bias":
                v = v[:shape.ffn]
            elif name == "mlp.c_proj.weight":
                v = v[:shape.ffn]
        sd[k] = v.clone()
    small.load_state_dict(sd, strict=False)  # tied lm_head and non-persistent buffers are rebuilt by the class
    if shape.heads < full.heads:
        small.prune_heads({i: list(range(shape.heads, full.heads)) for i in range(shape.layers)})
    small.tie_weights()
    return small.eval()
