"""One generated token with a KV cache: its ONNX export, parity and latency.

A size's `model.onnx` reads a whole window (what a prompt costs); generating text costs one
decoder step per token, which with a key/value cache reads one token and attends to the
cached keys and values of every earlier one. `DecodeStep` is that step on a model's own
weights (GPT-2's block as `gpt.nested_forward` writes it), exported as `decode.onnx` with
inputs ``input_ids`` (batch, 1), ``position`` (scalar: where the token sits) and
``past_key_<i>`` / ``past_value_<i>`` (batch, heads, past, head_dim) per layer, and outputs
``logits`` (batch, 1, vocab) and ``present_key_<i>`` / ``present_value_<i>`` (past + 1). Its
latency is one step after `past` cached tokens, timed with the project's timing loop under the
profile's settings (`hardware.timing`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import atomic_output
from ..types import HardwareProfile, LatencyReport
from .gpt import nested_forward

__all__ = ["DecodeExport", "DecodeStep", "export_decode_step", "measure_decode_step"]


class DecodeStep(nn.Module):
    """GPT-2's forward for ONE new token given the keys and values of the tokens before it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # in eval mode from the start: torch.onnx.export restores the wrapper's mode afterwards, and a
        # wrapper left in training mode would switch the model's dropout on for everything after
        self.eval()

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c, tr = self.model.config, self.model.transformer
        hd = c.n_embd // c.n_head
        x = tr.wte(input_ids) + tr.wpe(position.reshape(1, 1))
        present: list[torch.Tensor] = []
        for i, blk in enumerate(tr.h):
            heads = blk.attn.num_heads
            qkv = (blk.ln_1(x) @ blk.attn.c_attn.weight + blk.attn.c_attn.bias).unflatten(-1, (3, heads, hd))
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, 1, hd)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            present += [k, v]
            # one query attends to every cached position and itself: no causal mask needed. Written out:
            # the TorchScript exporter's SDPA gives wrong results when the query is shorter than the keys
            w = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, dim=-1)
            o = (w @ v).transpose(1, 2).flatten(2)
            x = x + o @ blk.attn.c_proj.weight + blk.attn.c_proj.bias
            h = blk.mlp.act(blk.ln_2(x) @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias)
            x = x + h @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias
        return (self.model.lm_head(tr.ln_f(x)), *present)


def _names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def _cache(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Keys and values of `ids` (B, T) in every layer, computed with the step itself, token by token."""
    step = DecodeStep(model)
    hd = model.config.n_embd // model.config.n_head
    past = [torch.zeros(ids.shape[0], blk.attn.num_heads, 0, hd) for blk in model.transformer.h for _ in (0, 1)]
    for t in range(ids.shape[1]):
        out = step(ids[:, t:t + 1], torch.tensor(t), *past)
        past = list(out[1:])
    return past


@dataclass(frozen=True)
class DecodeExport:
    path: Path
    max_abs_diff: float  # the step's logits vs the full forward's last position, after `past` tokens
    parity_ok: bool
    past: int  # cached tokens the parity check (and the timing) ran after


@torch.no_grad()
def export_decode_step(model: nn.Module, ids: torch.Tensor, path: Path, atol: float = 1e-3) -> DecodeExport:
    """`decode.onnx` for `model`, checked in ONNX Runtime: the step after `ids[:, :-1]` must give the
    full forward's logits at the last position of `ids`."""
    import onnxruntime as ort

    model = model.eval()
    layers = model.config.n_layer
    past_names, present_names = _names(layers)
    past = _cache(model, ids[:, :-1])
    pos = torch.tensor(ids.shape[1] - 1)
    axes = {n: {0: "batch", 2: "past"} for n in past_names}
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    axes.update({"input_ids": {0: "batch"}, "logits": {0: "batch"}})
    with atomic_output(path) as tmp:
        torch.onnx.export(DecodeStep(model), (ids[:, -1:], pos, *past), str(tmp), dynamo=False, opset_version=18,
                          input_names=["input_ids", "position", *past_names], output_names=["logits", *present_names],
                          dynamic_axes=axes, do_constant_folding=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    # at the traced length and at a shorter one: a cache length baked into the graph shows here
    for n in (ids.shape[1], max(2, ids.shape[1] // 3)):
        cut = ids[:, :n]
        past = _cache(model, cut[:, :-1])
        feed = {"input_ids": cut[:, -1:].numpy(), "position": np.array(n - 1, dtype=np.int64),
                **{name: t.numpy() for name, t in zip(past_names, past)}}
        got = session.run(["logits"], feed)[0][:, -1]
        diff = max(diff, float(np.abs(got - nested_forward(model, cut)[:, -1].numpy()).max()))
    return DecodeExport(path=Path(path), max_abs_diff=diff, parity_ok=diff <= atol, past=int(ids.shape[1] - 1))


def measure_decode_step(path: Path, model: nn.Module, profile: HardwareProfile, past: int) -> LatencyReport:
    """One generated token after `past` cached tokens, on `profile`'s ONNX Runtime settings (threads,
    warm-up, repeats, statistic), timed by the project's timing loop."""
    import time

    from ..hardware.backends import OrtCpuBackend
    from ..hardware.timing import measure_timed_run

    backend = OrtCpuBackend()
    session = backend.session(path, profile)
    hd = model.config.n_embd // model.config.n_head
    b = profile.batch_size
    rng = np.random.default_rng(0)
    feed: dict[str, Any] = {"input_ids": np.zeros((b, 1), dtype=np.int64), "position": np.array(past, dtype=np.int64)}
    for i, blk in enumerate(model.transformer.h):
        for kv in ("key", "value"):
            feed[f"past_{kv}_{i}"] = rng.standard_normal((b, blk.attn.num_heads, past, hd)).astype(np.float32)
    run, clock = session.run, time.perf_counter

    def timed_run() -> float:
        t0 = clock()
        run(["logits"], feed)
        return clock() - t0

    env = {"backend": backend.name, "what": f"one generated token after {past} cached tokens (KV cache)",
           "intra_op_threads": profile.threads, "batch_size": b}
    return measure_timed_run(timed_run, profile, env)
