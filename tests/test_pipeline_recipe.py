"""The nested-distillation recipe per student family (`pipeline._recipe`), as benchmarked."""
from __future__ import annotations

from compressor.distill import DistillConfig
from compressor.pipeline import _recipe


def test_cnn_tas_get_the_tuned_recipe() -> None:
    assert _recipe({"family": "cnn"}) == {"lr": 1e-2, "temperature": 2.0, "augment": "shift"}


def test_transformer_tas_keep_the_defaults_that_won_their_benchmark() -> None:
    # benchmarks/results/nested_transformer.md: lr 3e-3, tau 4, no shifts beat the CNN recipe
    cfg = DistillConfig(**_recipe({"family": "transformer", "depth": 2, "dim": 64, "heads": 4}))
    assert (cfg.lr, cfg.temperature, cfg.augment) == (3e-3, 4.0, "none")
