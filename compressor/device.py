"""Where the trained networks run: `--device cpu|cuda|auto` (config key `device`).

The device holds the search proxies' forward and backward passes and the whole
distillation (teacher, TA, students, batches). Everything a user receives is made
from CPU copies whatever the device: the extracted sizes come back to the CPU
before export, and latency is timed by the hardware profile, never here.
"""
from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["DEVICES", "check_device", "resolve_device"]

DEVICES = ("cpu", "cuda", "auto")


def check_device(name: str) -> None:
    """A known device name, and a GPU behind `cuda`; else one line saying so (exit 2)."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device cuda: no CUDA GPU is available to this process (torch {torch.__version__}); "
                          "use --device cpu, or --device auto to take a GPU only where there is one")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch device for `name`: `auto` is cuda where a GPU is available, else cpu. Under torchrun
    each rank of a machine takes its own GPU (`local_rank`, torchrun's LOCAL_RANK)."""
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
