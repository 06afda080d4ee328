"""Distillation: the nested Teacher → TA → students run, the loss zoo, single-student KD.

    sizes = choose_sizes(ta, example, groups, order, latency_fn, budget_ms)   # [("w100", 1.0), ...]
    result = train_family(teacher, ta, data, sizes=sizes, config=DistillConfig(), run_dir=path)
    result.models["w050"]   # dense nn.Module, BatchNorm recalibrated, ready for export

Modules: `nested` (the family, its sizes and their extraction), `train` (the
one-run training loop and checkpoints), `losses` (the zoo, by name),
`features` (feature-map taps), `bn` (BatchNorm recalibration), `single`
(one student, plain KD).
"""
from __future__ import annotations

from .bn import recalibrate_bn
from .features import FeatureTap
from .losses import LOSSES, DistillLoss, Out, build_loss, kd_kl
from .nested import NestedFamily, Ratio, SizeSpec, SubNet, choose_sizes, size_name
from .single import KDConfig, distill_single
from .train import DistillConfig, FamilyResult, train_family

__all__ = [
    "DistillConfig",
    "DistillLoss",
    "FamilyResult",
    "FeatureTap",
    "KDConfig",
    "LOSSES",
    "NestedFamily",
    "Out",
    "Ratio",
    "SizeSpec",
    "SubNet",
    "build_loss",
    "choose_sizes",
    "distill_single",
    "kd_kl",
    "recalibrate_bn",
    "size_name",
    "train_family",
]
