"""Every candidate of the teacher-derived space runs, for teachers nobody here wrote.

Third-party architectures from timm and torchvision (inverted residuals with squeeze-excite,
grouped convolutions, dense concatenation, ConvNeXt's layer norms and layer scale, attention,
fire modules, in-place residual adds), randomly initialised at 3x32x32 with 10 classes, are
lifted as `compress` lifts a teacher; candidates sampled from their `teacher_scaled` space must
build, run, score (batch, 10) and not grow; a few are exported to ONNX.

The default run samples a few candidates per teacher. The full property check (hundreds per
teacher, ONNX for several) takes many minutes:
``COMPRESSOR_ZOO_FULL=1 pytest tests/test_search_zoo_space.py -m slow``.
"""
from __future__ import annotations

import importlib.util
import os
import random
from typing import Any, Callable

import pytest
import torch

from compressor import prune as P
from compressor.errors import ConfigError
from compressor.search.spaces import TeacherScaledSpace
from compressor.types import InputSpec, Teacher

# find_spec, not importorskip: a bare `import torchvision` needs the shim in compressor.intake.zoo first
pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None
                                or importlib.util.find_spec("torchvision") is None,
                                reason="the models extra (timm, torchvision) is not installed")

SHAPE, CLASSES = (3, 32, 32), 10
FULL = os.environ.get("COMPRESSOR_ZOO_FULL", "") not in ("", "0")


def _zoo(name: str, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from compressor.intake.zoo import build_zoo_model

        return build_zoo_model(name, num_classes=CLASSES, in_channels=SHAPE[0], kwargs=kwargs)
    return build


def _torchvision(cls: str, *args: Any, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    """A torchvision architecture at another size than its named builders allow (fewer blocks)."""
    def build() -> torch.nn.Module:
        from compressor.intake.zoo import import_zoo

        models = import_zoo("torchvision").models
        module, _, name = cls.rpartition(".")
        built = [getattr(getattr(models, module), a) if isinstance(a, str) else a for a in args]
        return getattr(getattr(models, module), name)(*built, num_classes=CLASSES, **kwargs)
    return build


# name -> builder; what each brings that a hand-written CNN does not
TEACHERS: dict[str, Callable[[], torch.nn.Module]] = {
    "timm:mobilenetv3_small_050": _zoo("timm:mobilenetv3_small_050"),  # SE, h-swish, inverted residual
    "timm:efficientnet_b0": _zoo("timm:efficientnet_b0"),  # SE, SiLU, in-place activations
    "timm:regnetx_002": _zoo("timm:regnetx_002"),  # grouped convolutions
    "timm:regnety_002": _zoo("timm:regnety_002"),  # grouped convolutions with squeeze-excite
    "torchvision:densenet (small)": _torchvision("densenet.DenseNet", growth_rate=8, block_config=(2, 2, 2),
                                                 num_init_features=16),  # dense concatenation
    "timm:convnext_atto": _zoo("timm:convnext_atto"),  # depthwise 7x7, layer norm, layer scale
    "torchvision:resnet18": _zoo("torchvision:resnet18"),  # `out += identity`: in-place residual adds
    "torchvision:resnext (1 block per stage)": _torchvision("resnet.ResNet", "Bottleneck", [1, 1, 1, 1],
                                                            groups=32, width_per_group=4),
    "timm:deit_tiny_patch16_224 (depth 2)": _zoo("timm:deit_tiny_patch16_224", img_size=32, patch_size=8,
                                                 depth=2),  # attention heads, class token
    "torchvision:mobilenet_v2": _zoo("torchvision:mobilenet_v2"),  # relu6 in place, inverted residual
    "torchvision:mnasnet0_5": _zoo("torchvision:mnasnet0_5"),
    "torchvision:squeezenet1_1": _zoo("torchvision:squeezenet1_1"),  # fire modules: concatenation
}
SLOW_TEACHERS: dict[str, Callable[[], torch.nn.Module]] = {
    "timm:ghostnet_050": _zoo("timm:ghostnet_050"),  # ghost modules: concatenate then slice
    "timm:deit_tiny_patch16_224": _zoo("timm:deit_tiny_patch16_224", img_size=32, patch_size=8),
}
# the few teachers whose first candidate goes through ONNX in the default run (exports cost seconds)
ONNX_FAST = ("timm:mobilenetv3_small_050", "timm:regnetx_002", "timm:convnext_atto")


def lifted(name: str, build: Callable[[], torch.nn.Module]) -> Teacher:
    """The teacher as `compress` sees it: exported, lifted into layers, checked against the original."""
    from compressor.intake.teacher import _lift

    torch.manual_seed(0)
    model = build().eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # running statistics away from (0, 1): a wrong cut shows in the outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    module, prunable = _lift(model, name.partition(":")[0], model, torch.randn(4, *SHAPE, generator=g))
    assert prunable, f"{name} is not lifted into prunable layers"
    return Teacher(module, InputSpec(SHAPE, CLASSES), name, name.partition(":")[0], "sha", prunable=True)


class RandomTrial:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def suggest_categorical(self, name: str, choices):
        return self.rng.choice(list(choices))


_SPACES: dict[str, tuple[Teacher, TeacherScaledSpace]] = {}


def space_of(name: str) -> tuple[Teacher, TeacherScaledSpace]:
    if name not in _SPACES:
        t = lifted(name, {**TEACHERS, **SLOW_TEACHERS}[name])
        _SPACES[name] = (t, TeacherScaledSpace(t))
    return _SPACES[name]


def check_candidates(name: str, n: int, n_onnx: int, tmp_path, seed: int = 0) -> None:
    teacher, space = space_of(name)
    teacher_params = P.count_params(teacher.module)
    x = torch.randn(3, *SHAPE)  # not the space's batch of 2: the batch must stay free
    trial = RandomTrial(seed)
    # the smallest network of the space first: every width at its least, every droppable block dropped
    archs = [space.canonical({"ratios": {g.key: space.ratios[0] for g in space.groups},
                              "drop": [b.add for b in space.blocks]})]
    archs += [space.suggest(trial) for _ in range(n - 1)]
    for i, arch in enumerate(archs):
        try:
            model = space.build(arch, teacher)
            with torch.no_grad():
                out = model(x)
        except Exception as e:  # noqa: BLE001 - the message names the candidate
            pytest.fail(f"{name}: candidate {i} {arch} does not run: {type(e).__name__}: {e}")
        assert tuple(out.shape) == (len(x), CLASSES), f"{name}: candidate {i} scores {tuple(out.shape)}"
        assert torch.isfinite(out).all(), f"{name}: candidate {i} gives non-finite scores"
        assert P.count_params(model) <= teacher_params, f"{name}: candidate {i} is larger than its teacher"
        if i < n_onnx:
            from compressor.export.onnx_export import export_onnx

            res = export_onnx(model, x, tmp_path / f"candidate{i}.onnx", slim=False)
            assert res.parity_ok and res.checker_ok, f"{name}: candidate {i} ONNX export: {res.notes}"


@pytest.mark.parametrize("name", list(TEACHERS))
def test_candidates_of_zoo_teachers_build_and_run(name, tmp_path):
    check_candidates(name, n=3, n_onnx=1 if name in ONNX_FAST else 0, tmp_path=tmp_path)


def test_depth_is_searched_where_blocks_are_identity_skips():
    """In-place residual adds (torchvision's ResNet) are blocks too; a block that changes shape never is."""
    for name, least in (("torchvision:resnet18", 5), ("timm:mobilenetv3_small_050", 7), ("timm:convnext_atto", 8)):
        teacher, space = space_of(name)
        assert len(space.blocks) >= least, f"{name}: {len(space.blocks)} droppable blocks"


def test_a_network_without_skips_or_norms_keeps_its_depth():
    """SqueezeNet has no residual add and no normalisation layer: its shape-keeping fire modules are
    not offered (removed, nothing re-scales what they hand on, and its family never trained)."""
    from compressor.search.blocks import _plain_blocks, _shapes, _ancestors

    teacher, space = space_of("torchvision:squeezenet1_1")
    assert space.blocks == []
    gm = teacher.module
    stretches = _plain_blocks(gm, _shapes(gm, teacher.spec.example(2)), _ancestors(gm.graph))
    assert len(stretches) == 4  # fire 3, 5, 7 and 9: found, and left alone


def test_grouped_convolutions_are_cut_in_whole_groups():
    teacher, space = space_of("timm:regnetx_002")
    grouped = [g for g in space.groups if g.unit > 1]
    assert grouped, "the groups through RegNet's grouped convolutions are searched, in whole groups"
    model = space.build(space.canonical({"ratios": {g.key: 0.5 for g in space.groups}, "drop": []}), teacher)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.out_channels]
    assert convs and any(m.groups < 3 for m in convs)  # groups were removed, not channels inside a group
    assert all(m.in_channels % m.groups == 0 and m.out_channels == m.in_channels for m in convs)


def test_attention_projections_that_cannot_be_cut_are_kept_whole():
    """timm's qkv output is reshaped with the head count written into the graph: no cut runs."""
    _, space = space_of("timm:deit_tiny_patch16_224 (depth 2)")
    assert {k for k in space.uncuttable if k.endswith("attn_qkv")} == {"blocks_0_attn_qkv", "blocks_1_attn_qkv"}
    assert not set(space.uncuttable) & {g.key for g in space.groups}


def test_a_teacher_whose_channels_cannot_be_traced_is_refused_in_one_line():
    """ShuffleNet's channel shuffle (a reshape-transpose-reshape) defeats Torch-Pruning's tracing."""
    teacher = lifted("torchvision:shufflenet_v2_x0_5", _zoo("torchvision:shufflenet_v2_x0_5"))
    with pytest.raises(ConfigError, match="channel coupling cannot be traced") as err:
        TeacherScaledSpace(teacher)
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="hundreds of candidates per teacher take many minutes: "
                                     "set COMPRESSOR_ZOO_FULL=1 to run them")
@pytest.mark.parametrize("name", [*TEACHERS, *SLOW_TEACHERS])
def test_hundreds_of_candidates_of_zoo_teachers_build_and_run(name, tmp_path):
    check_candidates(name, n=int(os.environ.get("COMPRESSOR_ZOO_CANDIDATES", 200)), n_onnx=5, tmp_path=tmp_path,
                     seed=1)


def test_nested_sizes_of_a_vit_never_cut_the_attention_the_space_keeps_whole():
    """The TA's sizes are planned on its own channel groups: the qkv projections no cut leaves runnable
    (the head count a constant of the reshape) must stay whole there too, or no size builds."""
    from compressor.premeasure import plan_sizes

    teacher, space = space_of("timm:deit_tiny_patch16_224 (depth 2)")
    x = torch.randn(2, *SHAPE)
    ta_arch = {**space.canonical({"ratios": {}, "drop": []}), "student_ratio": 1.0}

    def macs(model: torch.nn.Module) -> float:
        return float(P.count_macs(model, x[:1]))

    nest = plan_sizes(ta_arch, teacher, x, macs, budget_ms=0.3 * macs(teacher.module), round_to=8)
    assert not [g for g in nest.groups if g.nestable and g.key.endswith("attn_qkv")]
    assert len(nest.sizes) >= 2
    for _, ratio in nest.sizes:
        assert nest.size_module(ratio)(x).shape == (2, CLASSES)
