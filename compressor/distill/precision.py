"""The arithmetic distillation's forward passes run in: `--train-precision auto|fp32|bf16`.

`bf16` runs every forward pass of a training step (teacher, TA, students) under
`torch.autocast` with bfloat16: convolutions and matrix products take bfloat16
inputs and accumulate in float32, while the weights, their gradients, the
optimizer and every loss stay float32 (the logits are cast back before any loss
is formed). Validation, BatchNorm recalibration and export stay float32.

`auto` picks bf16 only where it was measured to pay: a CPU whose oneDNN kernels
multiply bfloat16 in hardware, with AMX tiles (Intel Sapphire Rapids and later) or
the AVX-512 BF16 dot-product instructions (AMD Zen 4 and later, Intel Cooper Lake).
With AMX a step of the example teacher (batch 64, forward and backward) took
75-89 ms against 160-176 ms in float32; with AVX-512 BF16 and no AMX (an AMD EPYC)
79-83 ms against 138-143 ms, and a ViT-style student's 56 ms against 121-127 ms.
On a CPU with AVX2 only, bfloat16 is converted in software and is no faster, so
`auto` keeps float32 there. On a GPU `auto` keeps float32 (nothing here measured
it); `bf16` may be asked for on any device.

One shape keeps float32 under `auto` on every CPU: a convolution striding over an
input dimension of size 1 (a 3x3, stride-2 convolution on a 1x1 map, as timm's
test ResNet has on 8x8 images). On the AMD EPYC (AVX-512 BF16) its bfloat16
backward pass returned NaN gradients in 1-3 of 4-6 tries while the loss stayed
finite, so the optimizer wrote NaN into the weights unseen (a 1x1 input with
stride 2 and kernel 3-7, 1-D and 2-D alike; no other of 384 shapes did; its
forward pass was sound in 200 of 200). The networks to be trained are checked for
it on an example input (`one_pixel_strides`) and train in float32 where they have
one; `bf16` asked for is kept, with a warning. A shape nobody has seen fail yet is
caught as it happens: a bfloat16 step whose gradients are not finite is skipped
and the run goes on in float32 (`guarded_step`, used by every trainer here).

The choice depends on the CPU, so it is never silent: the resolved precision and
the reason are logged, and written to the manifest's training record.
"""
from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Iterable

import torch
from torch import nn

from ..config import TRAIN_PRECISIONS as PRECISIONS
from ..errors import ConfigError

__all__ = ["PRECISIONS", "gradients_finite", "guarded_step", "one_pixel_strides", "resolve_precision",
           "training_autocast"]

log = logging.getLogger(__name__)


def _supported(probe_name: str) -> bool:
    probe = getattr(torch.cpu, probe_name, None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # an unknown CPU: no claim that bf16 pays
        return False


def _bf16_hardware() -> str | None:
    """The CPU's bfloat16 multiply in hardware, named for the log; None where it has none."""
    if _supported("_is_amx_tile_supported"):
        return "AMX tiles"
    if _supported("_is_avx512_bf16_supported"):
        return "AVX-512 BF16"
    return None


def one_pixel_strides(nets: Iterable[tuple[nn.Module, torch.Tensor]]) -> list[str]:
    """The convolutions of each (network, example input) that stride over an input dimension of
    size 1, by module name: found by running the example through the network once, in eval mode
    and without gradients. A network that cannot be run so is skipped."""
    found: list[str] = []
    for net, example in nets:
        convs = {m: name for name, m in net.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
        if not convs:
            continue

        def check(module: nn.Module, args: tuple, convs: dict = convs) -> None:
            spatial = args[0].shape[2:]
            if any(size == 1 and stride > 1 for size, stride in zip(spatial, module.stride)):
                found.append(convs[module])
        handles, training = [], net.training
        try:
            handles = [m.register_forward_pre_hook(check) for m in convs]
            with torch.no_grad():
                net.eval()(example[:1])  # eval: BatchNorm's running statistics stay as they are
        except Exception:  # not runnable here (TorchScript, another device): nothing is claimed about it
            log.debug("could not check %s's convolutions for bfloat16", type(net).__name__, exc_info=True)
        finally:
            net.train(training)
            for h in handles:
                h.remove()
    return sorted(set(found))


def resolve_precision(requested: str, device: torch.device | str = "cpu",
                      nets: Iterable[tuple[nn.Module, torch.Tensor]] = ()) -> tuple[str, str]:
    """The precision a run trains in ("fp32" or "bf16") and why, for `requested` on `device`.
    `nets`: the networks the run trains or runs under autocast, each with an example input on the
    CPU, checked for the convolution shape whose bfloat16 backward pass is not trusted."""
    if requested not in PRECISIONS:
        raise ConfigError(f"train precision must be one of {', '.join(PRECISIONS)} but got {requested!r}")
    if requested == "fp32":
        return requested, "asked for"
    if requested == "bf16":
        unsafe = one_pixel_strides(nets)
        if unsafe:
            log.warning("bfloat16 training as asked for, although %s stride over a 1-pixel input, whose "
                        "bfloat16 gradients were seen to be NaN on a CPU here", _names(unsafe))
        return requested, "asked for"
    if torch.device(device).type != "cpu":
        return "fp32", "auto: bfloat16 training is measured on CPUs only"
    hardware = _bf16_hardware()
    if not hardware:
        return "fp32", ("auto: this CPU multiplies bfloat16 in software only (no AMX, no AVX-512 BF16), "
                        "where it does not pay")
    unsafe = one_pixel_strides(nets)
    if unsafe:
        return "fp32", (f"auto: {_names(unsafe)} stride over a 1-pixel input, whose bfloat16 gradients are "
                        "not trusted")
    return "bf16", f"auto: this CPU has {hardware} (bfloat16 convolutions and matrix products in hardware)"


def _names(modules: list[str]) -> str:
    return ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3 else "")


def training_autocast(precision: str, device: torch.device | str = "cpu") -> ContextManager:
    """A context under which a training step's forward passes run in `precision` (resolved)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def gradients_finite(params: Iterable[nn.Parameter]) -> bool:
    """Whether every gradient of `params` is finite (one fused norm over them all). A bfloat16 run
    that sees one is not: the trainers skip that step and go on in float32 (the loss can be finite
    while a kernel's gradients are not, so the divergence guard would not see it)."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def guarded_step(opt: torch.optim.Optimizer, precision: str, label: str) -> str:
    """Take `opt`'s step, unless a bfloat16 step's gradients are not finite: then the step is skipped
    (no NaN reaches a weight) and the precision to go on in is float32. Returns that precision."""
    if precision == "bf16" and not gradients_finite(p for group in opt.param_groups for p in group["params"]):
        log.warning("%s: bfloat16 gave non-finite gradients: that step is skipped and training goes on in "
                    "float32", label)
        return "fp32"
    opt.step()
    return precision
