"""Search spaces: teacher-derived (residual, concat, depthwise teachers, block removal) and families."""
import json
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from compressor import prune as P
from compressor.errors import ConfigError
from compressor.intake.lift import lift_exported
from compressor.search import SPACES, build_arch, drop_blocks, find_residual_blocks, nested_ratio, widen_to_assistant
from compressor.search.spaces import FixedParams
from compressor.types import InputSpec, Teacher
from tiny_models import TinyResidual, randomise_bn


class BlockNet(nn.Module):
    """Two nested identity residual blocks (one depthwise), a strided projection block, a concat."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.b1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.b2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU(), nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.b3 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24))
        self.proj = nn.Conv2d(16, 24, 1, stride=2, bias=False)
        self.side = nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        inner = F.relu(x + self.b1(x))
        x = x + self.b2(inner)  # outer block: its branch contains the inner one
        x = F.relu(self.b3(x) + self.proj(x))  # shapes change on the skip: not removable
        x = torch.cat([x, self.side(x)], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lifted_teacher(model: nn.Module, shape=(1, 8, 8)) -> Teacher:
    torch.manual_seed(0)
    model = randomise_bn(model).eval()
    x = torch.randn(2, *shape)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    gm, _ = lift_exported(ep.module())
    return Teacher(gm, InputSpec(shape, 10), "test", "module", "sha")


class Pick:
    """A trial that picks by a rule: first, last, or seeded random choices."""

    def __init__(self, rule: str = "random", seed: int = 0, fixed: dict | None = None) -> None:
        self.rule, self.rng, self.fixed = rule, random.Random(seed), fixed or {}

    def suggest_categorical(self, name, choices):
        if name in self.fixed:
            return self.fixed[name]
        return {"first": choices[0], "last": choices[-1]}.get(self.rule, self.rng.choice(list(choices)))


@pytest.fixture(scope="module")
def block_teacher():
    return lifted_teacher(BlockNet())


@pytest.fixture(scope="module")
def tiny_teacher():
    return lifted_teacher(TinyResidual())


@pytest.fixture(scope="module")
def vit_teacher():
    from compressor.families import build_family

    torch.manual_seed(0)
    return lifted_teacher(build_family({"family": "transformer", "depth": 2, "dim": 32, "heads": 4, "mlp_ratio": 2,
                                        "patch": 2}, (1, 8, 8), 10))


def test_lifted_attention_is_cut_in_whole_heads(vit_teacher):
    space = SPACES.get("teacher_scaled")(vit_teacher, round_to=4)
    attn = [g for g in space.groups if "attn" in g.key]
    assert attn and all(g.unit == 8 for g in attn)  # read from the graph's (..., heads, 8) reshapes
    assert len(space.blocks) == 4  # two attention and two MLP residuals


def test_residual_blocks_found_on_identity_skips_only(block_teacher):
    blocks = find_residual_blocks(block_teacher.module, block_teacher.spec.example(2))
    assert len(blocks) == 2  # inner and outer; the projection block changes shape on its skip
    inner, outer = blocks
    assert set(inner.layers) < set(outer.layers)


@pytest.mark.parametrize("drop", [[0], [1], [0, 1]])
def test_block_removal_keeps_the_model_runnable(block_teacher, drop):
    gm, x = block_teacher.module, block_teacher.spec.example(4)
    blocks = find_residual_blocks(gm, x)
    reduced = drop_blocks(gm, [blocks[i].add for i in drop], x)
    assert reduced(x).shape == gm(x).shape
    assert P.count_params(reduced) < P.count_params(gm)
    assert P.count_params(gm) == P.count_params(lifted_teacher(BlockNet()).module)  # the teacher is untouched
    P.channel_groups(reduced, x[:2])  # still prunable


class InPlaceNet(nn.Module):
    """torchvision's idioms: in-place activations, ``out += identity``, dropout; and one in-place op
    whose input another op reads too (left in place: whether that op sees the mutation depends on order)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                  nn.Dropout(0.1), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x), inplace=True)
        out = self.body(x)
        out += x  # an in-place residual add
        before = out * 2  # reads `out` before the next op mutates it
        out.sigmoid_()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out + before, 1), 1))


def test_in_place_ops_are_lifted_out_of_place_where_nobody_sees_the_mutation():
    net = InPlaceNet()
    teacher = lifted_teacher(net)  # (batch-norm statistics randomised in `net` too)
    ops = [str(n.target) for n in teacher.module.graph.nodes if n.op == "call_function"]
    assert "aten.add.Tensor" in ops and not any(o.startswith(("aten.relu_", "aten.add_")) for o in ops)
    assert "aten.sigmoid_.default" in ops  # `out` is read by another op too: left in place
    x = teacher.spec.example(3)
    with torch.no_grad():
        torch.testing.assert_close(teacher.module(x), net(x))
    (block,) = find_residual_blocks(teacher.module, x)  # the in-place add is a residual block
    reduced = drop_blocks(teacher.module, [block.add], x)
    assert not [n for n in reduced.graph.nodes if n.op == "call_module" and n.target.startswith("body")]
    space = SPACES.get("teacher_scaled")(teacher, round_to=4)
    for rule in ("first", "last", "random"):
        assert space.build(space.suggest(Pick(rule)), teacher)(x).shape == (3, 10)


@pytest.mark.parametrize("teacher_name", ["block_teacher", "tiny_teacher", "vit_teacher"])
@pytest.mark.parametrize("rule", ["first", "last", "random"])
def test_teacher_scaled_builds_thinner_runnable_networks(teacher_name, rule, request):
    teacher = request.getfixturevalue(teacher_name)
    space = SPACES.get("teacher_scaled")(teacher, round_to=4)
    arch = space.suggest(Pick(rule, seed=3))
    assert json.loads(json.dumps(arch)) == arch and arch["space"] == "teacher_scaled"
    model = space.build(arch, teacher)
    x = teacher.spec.example(3)
    assert model(x).shape == (3, 10)
    assert P.count_params(model) <= P.count_params(teacher.module)
    if rule == "first":
        assert P.count_params(model) < P.count_params(teacher.module)
    for m in model.modules():  # depthwise convolutions stay depthwise after cutting
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels


def test_teacher_scaled_keeps_teacher_weights_and_rebuilds_identically(block_teacher):
    space = SPACES.get("teacher_scaled")(block_teacher, round_to=4)
    arch = space.suggest(Pick("random", seed=1))
    a = space.build(arch, block_teacher)
    b = build_arch(json.loads(json.dumps(arch)), block_teacher)  # a fresh space from the record alone
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    full = space.build({**arch, "ratios": {}, "drop": []}, block_teacher)
    x = block_teacher.spec.example(2)
    assert torch.allclose(full(x), block_teacher.module(x))


def test_dropping_the_outer_block_drops_the_inner_one_in_the_record(block_teacher):
    space = SPACES.get("teacher_scaled")(block_teacher, round_to=4)
    inner, outer = space.blocks
    arch = space.canonical({"ratios": {}, "drop": [inner.add, outer.add]})
    assert arch["drop"] == [outer.add]
    inside = {g.key for g in space.groups if all(m.module in outer.layers for m in g.members)}
    assert inside and not inside & set(arch["ratios"])  # groups that vanish with the block have no ratio
    assert len(arch["ratios"]) == len(space.groups) - len(inside)  # the stem's chain survives, keyed as before


def test_teacher_scaled_needs_a_prunable_teacher(tiny_teacher):
    opaque = Teacher(tiny_teacher.module, tiny_teacher.spec, "x", "export", "sha", prunable=False)
    with pytest.raises(ConfigError):
        SPACES.get("teacher_scaled")(opaque)


@pytest.mark.parametrize("shape", [(1, 8, 8), (40,)], ids=["2d", "1d"])
@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_family_spaces_build_deterministically(name, shape, tiny_teacher):
    teacher = Teacher(tiny_teacher.module, InputSpec(shape, 10), "x", "module", "sha")
    space = SPACES.get(name)(teacher)
    for seed in range(3):
        arch = space.suggest(Pick("random", seed=seed))
        a, b = space.build(arch, teacher), build_arch(json.loads(json.dumps(arch)), teacher)
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        assert a(teacher.spec.example(2)).shape == (2, 10)
        for m in a.modules():  # channel counts are multiples of the hardware's
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.out_channels > 10:
                assert m.out_channels % 8 == 0


@pytest.mark.parametrize("name", SPACES.names())  # the contract binds every registered space
def test_assistant_nests_the_student_exactly(name, block_teacher):
    round_to = 4 if name == "teacher_scaled" else 8
    space = SPACES.get(name)(block_teacher, round_to=round_to)
    x = block_teacher.spec.example(2)
    for seed in range(2):
        arch = space.suggest(Pick("random", seed=seed, fixed={"ts.width0": 0.5}))
        student = space.build(arch, block_teacher)
        ta = widen_to_assistant(space, arch, block_teacher, latency_fn=P.count_params, max_latency_ms=float("inf"),
                                factors=(2.0,), example=x, round_to=round_to)
        assert ta.arch["expansion"] == 2.0
        assert P.count_params(ta.model) > P.count_params(student)
        ratio = ta.arch["student_ratio"]
        groups = P.channel_groups(ta.model, x)
        cut = P.materialize(ta.model, x, groups, ratio, None, round_to)
        assert {k: v.shape for k, v in cut.state_dict().items()} == \
               {k: v.shape for k, v in student.state_dict().items()}
        if name == "cnn":
            assert ratio == 0.5


def test_assistant_widens_the_groups_that_nest_when_a_uniform_widening_does_not(block_teacher, monkeypatch):
    """A cut whose widths are tied in ways a uniform widening breaks (as on GhostNet) still gets a
    wider TA: the groups that keep the student nested are widened, one at a time, and the rest keep
    the student's width; the TA nests the student exactly."""
    from compressor.search import assistant as A

    space = SPACES.get("teacher_scaled")(block_teacher, round_to=4)
    x = block_teacher.spec.example(2)
    arch = space.canonical(space.suggest(Pick("random", seed=0, fixed={"ts.width0": 0.5})))
    student = space.build(arch, block_teacher)
    layers = dict(student.named_modules())
    tied = next(k for k, r in arch["ratios"].items() if r < 1.0 and k in layers)  # this group may not widen
    real = A.nested_ratio

    def tied_nesting(ta, stu, example, round_to):
        if dict(ta.named_modules())[tied].out_channels > dict(stu.named_modules())[tied].out_channels:
            raise A.NotNestedError(f"{tied} is tied to another group")
        return real(ta, stu, example, round_to)

    monkeypatch.setattr(A, "nested_ratio", tied_nesting)
    ta = widen_to_assistant(space, arch, block_teacher, latency_fn=P.count_params, max_latency_ms=float("inf"),
                            factors=(2.0,), example=x, round_to=4)
    assert ta.arch["expansion"] == 2.0 and P.count_params(ta.model) > P.count_params(student)
    assert ta.arch["ratios"][tied] == arch["ratios"][tied]
    assert any(ta.arch["ratios"][k] > r for k, r in arch["ratios"].items())
    cut = P.materialize(ta.model, x, P.channel_groups(ta.model, x), ta.arch["student_ratio"], None, 4)
    assert {k: v.shape for k, v in cut.state_dict().items()} == {k: v.shape for k, v in student.state_dict().items()}
    # nothing that nests: the student is its own TA, as before
    monkeypatch.setattr(A, "nested_ratio", lambda *a: (_ for _ in ()).throw(A.NotNestedError("never")))
    assert widen_to_assistant(space, arch, block_teacher, latency_fn=P.count_params, max_latency_ms=float("inf"),
                              factors=(2.0,), example=x, round_to=4).arch["expansion"] == 1.0


def test_assistant_is_capped_by_the_teacher_latency(block_teacher):
    space = SPACES.get("cnn")(block_teacher)
    arch = space.suggest(Pick("first"))
    student = space.build(arch, block_teacher)
    cap = P.count_params(student) * 1.5  # latency stand-in: x2 and x1.5 widenings are too slow
    ta = widen_to_assistant(space, arch, block_teacher, latency_fn=P.count_params, max_latency_ms=cap,
                            factors=(2.0, 1.5), example=block_teacher.spec.example(2), round_to=8)
    assert ta.arch["expansion"] == 1.0 and ta.arch["student_ratio"] == 1.0


def test_assistant_reaches_over_a_budget_its_usual_widening_still_fits(block_teacher):
    space = SPACES.get("cnn")(block_teacher)
    arch = space.suggest(Pick("first"))
    x = block_teacher.spec.example(2)
    student = P.count_params(space.build(arch, block_teacher))
    kwargs = dict(latency_fn=P.count_params, max_latency_ms=float("inf"), factors=(2.0, 1.5), example=x,
                  round_to=8, reach=(3.0, 4.0, 6.0))
    # the x2 assistant is under the budget: the narrowest reach over it is taken
    budget = P.count_params(space.build(space.widen(arch, 3.0), block_teacher)) + 1
    ta = widen_to_assistant(space, arch, block_teacher, budget_ms=budget, **kwargs)
    assert ta.arch["expansion"] == 4.0 and P.count_params(ta.model) > budget
    cut = P.materialize(ta.model, x, P.channel_groups(ta.model, x), ta.arch["student_ratio"], None, 8)
    assert P.count_params(cut) == student
    # over the budget already at x2: the usual rule alone; nothing over it: the widest within the teacher
    assert widen_to_assistant(space, arch, block_teacher, budget_ms=student, **kwargs).arch["expansion"] == 2.0
    huge = widen_to_assistant(space, arch, block_teacher, budget_ms=float("inf"), **kwargs)
    assert huge.arch["expansion"] == 6.0
    capped = {**kwargs, "max_latency_ms": budget}  # the teacher is as slow as the x3 assistant: x3 it is
    assert widen_to_assistant(space, arch, block_teacher, budget_ms=float("inf"), **capped).arch["expansion"] == 3.0


def test_nested_ratio_rejects_a_student_that_does_not_nest(tiny_teacher):
    space = SPACES.get("cnn")(tiny_teacher)
    a = space.build({"space": "cnn", "family": "cnn", "widths": [16, 32], "depths": [1, 1], "kernel": 3}, tiny_teacher)
    b = space.build({"space": "cnn", "family": "cnn", "widths": [24, 16], "depths": [1, 1], "kernel": 3}, tiny_teacher)
    from compressor.search import NotNestedError

    with pytest.raises(NotNestedError):
        nested_ratio(a, b, tiny_teacher.spec.example(2), 8)


@pytest.mark.parametrize("shape, stem", [((1, 32, 32), 4), ((1, 16, 16), 2), ((40,), 2)], ids=["2d", "2d-16", "1d"])
def test_cnn_space_offers_a_strided_stem_and_deep_narrow_anchors(shape, stem, tiny_teacher):
    """The anchors (the cheapest networks, scored first) start with the most strided stem the input
    allows: a stride-4 patchify stem on images of 32 pixels a side, stride 2 on smaller ones and 1-D."""
    teacher = Teacher(tiny_teacher.module, InputSpec(shape, 10), "x", "module", "sha")
    space = SPACES.get("cnn")(teacher)
    anchors = space.anchors()
    assert [a["cnn.stages"] for a in anchors] == sorted({a["cnn.stages"] for a in anchors})
    assert len(anchors) >= 2 and all(a["cnn.stem"] == stem for a in anchors)
    x = teacher.spec.example(2)
    for params in anchors:
        arch = space.suggest(Pick("first", fixed=params))
        assert arch["stem"] == stem and len(arch["widths"]) == params["cnn.stages"]
        model = space.build(arch, teacher)
        assert model(x).shape == (2, 10)
        first = model.features[0](x if len(shape) > 1 else x.unsqueeze(1))
        assert first.shape[-1] == shape[-1] // stem  # the stem divides the resolution by its stride
        again = build_arch(json.loads(json.dumps(space.widen(arch, 2.0))), teacher)  # the TA keeps the stem
        assert again.features[0].conv.stride[0] == stem


def test_patchify_stem_reads_every_pixel_once_and_leaves_room_for_its_stages(tiny_teacher):
    teacher = Teacher(tiny_teacher.module, InputSpec((3, 32, 32), 10), "x", "module", "sha")
    space = SPACES.get("cnn")(teacher)
    assert space.stems == (1, 2, 4)
    for seed in range(40):  # every sampled network builds, and the last stage still sees 2x2 or more
        arch = space.suggest(Pick("random", seed=seed))
        model = space.build(arch, teacher)
        x = teacher.spec.example(2)
        assert model(x).shape == (2, 10)
        assert model.features(x).shape[-1] >= 2
        if arch.get("stem") == 4:
            conv = model.features[0].conv
            assert conv.kernel_size == (4, 4) and conv.stride == (4, 4) and conv.padding == (0, 0)


def test_small_inputs_keep_the_full_resolution_stem(tiny_teacher):
    space = SPACES.get("cnn")(tiny_teacher)  # 8x8: a stride-2 stem would leave no room for stages
    assert "stem" not in space.suggest(Pick("random", seed=0))
    assert all("cnn.stem" not in a for a in space.anchors())


class FourBlocks(nn.Module):
    """Four identity residual blocks whose branches add very different amounts to the stream."""

    def __init__(self, scales=(1.0, 0.01, 0.5, 0.05)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                                  nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(16)) for _ in scales)
        for block, s in zip(self.blocks, scales):
            nn.init.constant_(block[-1].weight, s)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_budget_no_width_cut_meets_is_anchored_by_dropping_the_least_contributing_blocks():
    torch.manual_seed(0)
    teacher = Teacher(lift_exported(torch.export.export(
        FourBlocks().eval(), (torch.randn(2, 1, 8, 8),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module())[0], InputSpec((1, 8, 8), 10),
        "test", "module", "sha")
    space = SPACES.get("teacher_scaled")(teacher, round_to=4)
    assert len(space.blocks) == 4
    built = []

    def fits(arch):  # latency set by depth alone: at most two blocks, whatever the width
        built.append(arch)
        convs = sum(isinstance(m, nn.Conv2d) for m in space.build(arch, teacher).modules())
        return convs <= 1 + 2 * 2

    anchors = space.budget_anchors(fits, torch.randn(16, 1, 8, 8))
    assert len(anchors) == 1  # narrower widths keep no more blocks: no second anchor
    arch = space.suggest(FixedParams(anchors[0]))
    assert fits(arch)
    # the blocks whose branches add least (scales 0.01 and 0.05) go; the teacher's width stays
    assert arch["drop"] == [space.blocks[1].add, space.blocks[3].add]
    assert all(r == 1.0 for r in arch["ratios"].values())
    assert len(built) < 12  # bisected, not every combination tried
    # a budget some uniform cut of every block meets is anchored by the widest such cut and the next
    # narrower one (in case the widest measures over), every block kept
    uniform = space.budget_anchors(lambda arch: not arch["drop"], None)
    assert [a["ts.width0"] for a in uniform] == [space.ratios[-2], space.ratios[-3]]
    assert all(all(v for k, v in a.items() if k.startswith("ts.keep")) for a in uniform)


class PlainNet(nn.Module):
    """No skip path anywhere: shape-keeping layers, a fire module (squeeze, two expands concatenated
    back to the input's channels), a strided layer, a shape-keeping layer after it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.c1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.squeeze, self.e1, self.e3 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(F.relu(self.stem(x)))
        s = F.relu(self.squeeze(x))
        x = torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)
        x = F.relu(self.c2(F.relu(self.down(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_network_without_skips_is_made_shallower_by_its_shape_keeping_stretches():
    teacher = lifted_teacher(PlainNet())
    gm, x = teacher.module, teacher.spec.example(4)
    blocks = find_residual_blocks(gm, x)
    # the conv-bn-relu, the fire module and the conv after the strided one; never the stem or `down`
    assert [b.residual for b in blocks] == [False] * 3
    assert [sorted({name.split(".")[0].split("_")[0] for name in b.layers}) for b in blocks] == \
        [["c1"], ["e1", "e3", "squeeze"], ["c2"]]
    for drop in ([0], [1], [2], [0, 1], [0, 1, 2]):  # 0 then 1: the fire module's input went with block 0
        skips = {b.add: b.skip for b in blocks}
        reduced = drop_blocks(gm, [blocks[i].add for i in drop], x, skips)
        assert reduced(x).shape == gm(x).shape
        assert P.count_params(reduced) < P.count_params(gm)
        P.channel_groups(reduced, x[:2])  # still prunable
    from compressor.search.blocks import branch_shares

    shares = branch_shares(gm, blocks, x)
    assert set(shares) == {b.add for b in blocks} and all(v > 0 for v in shares.values())
    # the space searches that depth: candidates drop the stretches and still build and run
    space = SPACES.get("teacher_scaled")(teacher, round_to=4)
    assert len(space.blocks) == 3
    arch = space.canonical({"ratios": {g.key: 0.5 for g in space.groups}, "drop": [b.add for b in blocks]})
    model = space.build(arch, teacher)
    assert model(x).shape == (4, 10) and P.count_params(model) < P.count_params(gm) / 2


class _DeepResidual(nn.Module):
    """A stem, then `depth` identity-skip blocks (each droppable), then a head."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(depth))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = x + F.relu(block(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("depth, choices", [(3, 3), (12, 8)])
def test_depth_choices_count_the_sampled_keep_or_drop_choices(depth, choices) -> None:
    """One per droppable block, tied in runs past the space's cap of 8 (what `bench_zoo_trials` reads)."""
    torch.manual_seed(0)
    ep = torch.export.export(_DeepResidual(depth).eval(), (torch.randn(2, 1, 8, 8),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    teacher = Teacher(lift_exported(ep.module())[0], InputSpec((1, 8, 8), 10), "test", "module", "sha")
    space = SPACES.get("teacher_scaled")(teacher)
    assert len(space.blocks) == depth and space.depth_choices == choices
    assert SPACES.get("cnn")(teacher).depth_choices == 0
