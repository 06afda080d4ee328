"""A torchrun rank other than 0 in `compress`: it helps rank 0 train the nested family.

Rank 0 runs the pipeline alone (teacher measurement, search, export, profiling,
report, manifest) and alone holds and writes the run folder. Every other rank
loads the same data and teacher, waits for rank 0's `TrainingPlan` (the searched
TA, its sizes and channel order, the distillation settings), builds the same TA
and trains its share of every batch (`distill.train_family_rank`); it writes
nothing. Rank 0 sends None when its run ends, and the others end with it.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .config import CompressConfig
from .distill import DistillConfig, SizeSpec
from .distill.train import train_family_rank
from .intake import load_data, load_teacher
from .ranks import Ranks
from .search import build_arch

__all__ = ["TrainingPlan", "follow"]


@dataclass(frozen=True)
class TrainingPlan:
    """What rank 0 decided and every rank needs to train the family with it; sent before training."""

    ta_arch: Mapping[str, Any]
    sizes: tuple[SizeSpec, ...]
    order: Mapping[str, tuple[int, ...]]  # rank 0's channel importance order (a resumed run: the checkpoint's)
    config: DistillConfig
    run_dir: str  # rank 0's run folder, for this rank's result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def follow(cfg: CompressConfig, ranks: Ranks, device: torch.device) -> Path | None:
    """Train each family rank 0 trains, until rank 0's run ends. Returns rank 0's run folder
    (None when it trained no family: the skeleton method, or a run that ended before training)."""
    # rank 0 logs everything this rank would (the same teacher, data and training): once is enough
    logging.getLogger("compressor").setLevel(logging.ERROR)
    seed_everything(cfg.seed)
    data = load_data(cfg.data, seed=cfg.seed, image_size=cfg.image_size)
    teacher = load_teacher(cfg.teacher, data.x_val[:8], data.num_classes, arch=cfg.arch, arch_kwargs=cfg.arch_kwargs,
                           trust_pickle=cfg.trust_pickle, input_shape=cfg.input_shape, weights=cfg.weights)
    run_dir = None
    while (plan := ranks.broadcast(None)) is not None:
        seed_everything(cfg.seed)  # as rank 0 does before it builds the TA (whose weights DDP then sends)
        ta = build_arch(plan.ta_arch, teacher)
        train_family_rank(teacher.module, ta, data, sizes=plan.sizes, config=plan.config, ranks=ranks,
                          order=plan.order, device=device)
        run_dir = Path(plan.run_dir)
    return run_dir
