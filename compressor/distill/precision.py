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

The choice depends on the CPU, so it is never silent: the resolved precision and
the reason are logged, and written to the manifest's training record.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ..config import TRAIN_PRECISIONS as PRECISIONS
from ..errors import ConfigError

__all__ = ["PRECISIONS", "resolve_precision", "training_autocast"]


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


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> tuple[str, str]:
    """The precision a run trains in ("fp32" or "bf16") and why, for `requested` on `device`."""
    if requested not in PRECISIONS:
        raise ConfigError(f"train precision must be one of {', '.join(PRECISIONS)} but got {requested!r}")
    if requested != "auto":
        return requested, "asked for"
    if torch.device(device).type != "cpu":
        return "fp32", "auto: bfloat16 training is measured on CPUs only"
    hardware = _bf16_hardware()
    if hardware:
        return "bf16", f"auto: this CPU has {hardware} (bfloat16 convolutions and matrix products in hardware)"
    return "fp32", ("auto: this CPU multiplies bfloat16 in software only (no AMX, no AVX-512 BF16), "
                    "where it does not pay")


def training_autocast(precision: str, device: torch.device | str = "cpu") -> ContextManager:
    """A context under which a training step's forward passes run in `precision` (resolved)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
