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


def test_a_ta_cut_from_a_vit_teacher_gets_the_transformer_recipe(tmp_path) -> None:
    """A teacher_scaled TA names no family; a lifted TorchScript ViT is still recognised by its attention,
    and a lifted CNN is not."""
    import torch

    from compressor.families import build_family
    from compressor.intake.teacher import load_teacher

    x = torch.randn(2, 1, 8, 8)
    for arch, recipe in (({"family": "transformer", "depth": 1, "dim": 16, "heads": 2, "patch": 4}, {}),
                         ({"family": "cnn", "widths": [8, 16], "depths": [1, 1]}, _recipe({"family": "cnn"}))):
        path = tmp_path / f"{arch['family']}.pt"
        torch.jit.save(torch.jit.trace(build_family(arch, (1, 8, 8), 10).eval(), x), str(path))
        lifted = load_teacher(path, x, 10).module
        assert _recipe({"space": "teacher_scaled"}, lifted) == recipe
