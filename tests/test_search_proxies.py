"""Proxy contract over the whole registry, DisWOT's metrics on hand-computed cases, normalisation."""
import math

import pytest
import torch

from compressor.errors import ConfigError
from compressor.families import build_family
from compressor.intake.lift import lift_exported
from compressor.search import PROXIES, Reference, TeacherContext, get_proxy, teacher_context
from compressor.search.diswot import signals
from compressor.search.nets import FeatureMapTap
from compressor.search.similarity import (batch_gram, class_activation_maps, class_gram, gram_distance,
                                          map_distance)
from tiny_models import TinyResidual, randomise_bn

CNN = {"family": "cnn", "widths": [8, 16], "depths": [1, 2], "kernel": 3}
VIT = {"family": "transformer", "depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2, "patch": 2}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 10


@pytest.fixture(scope="module")
def teacher(batch):
    torch.manual_seed(0)
    model = randomise_bn(TinyResidual()).eval()
    ep = torch.export.export(model, (batch[0][:2],), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    return lift_exported(ep.module())[0]


@pytest.fixture(scope="module")
def ctx(teacher, batch):
    base = teacher_context(teacher, batch, seed=0)
    pool = [build_family(a, (1, 8, 8), 10) for a in (CNN, {**CNN, "widths": [16, 8]}, VIT)]
    terms = []
    for m in pool:
        t = {}
        for name in PROXIES:
            t.update(PROXIES.get(name).measure(m, batch, base))
        terms.append(t)
    return base.with_reference(Reference.from_terms(terms))


def _students():
    torch.manual_seed(1)
    return {"cnn": build_family(CNN, (1, 8, 8), 10), "transformer": build_family(VIT, (1, 8, 8), 10)}


@pytest.mark.parametrize("name", PROXIES.names())
@pytest.mark.parametrize("kind", ["cnn", "transformer", "teacher"])
def test_proxy_contract(name, kind, batch, ctx, teacher):
    model = teacher if kind == "teacher" else _students()[kind]
    model.train(kind == "cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    proxy = PROXIES.get(name)
    a = proxy(model, batch, ctx)
    b = proxy(model, batch, ctx)
    assert math.isfinite(a)
    assert a == b  # deterministic for a seed, and nothing (the teacher's gradient...) accumulates
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training == (kind == "cnn")
    assert all(p.grad is None for p in model.parameters())


def test_proxies_score_architectures_not_weights(batch, ctx):
    a, b = build_family(CNN, (1, 8, 8), 10), build_family(CNN, (1, 8, 8), 10)  # other random weights
    for name in ("diswot", "snip", "synflow", "naswot"):
        assert PROXIES.get(name)(a, batch, ctx) == PROXIES.get(name)(b, batch, ctx)


def test_class_gram_is_width_free_and_matches_hand_values():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(class_gram(g), torch.eye(2, dtype=torch.float64))
    same = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(class_gram(same), torch.ones(2, 2, dtype=torch.float64))
    assert gram_distance(class_gram(g), class_gram(same)) == pytest.approx(0.5)  # (0 + 1 + 1 + 0) / 2²
    wide = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0, 0.0]])  # another width, same relations
    assert gram_distance(class_gram(g), class_gram(wide)) == pytest.approx(0.0)


def test_batch_gram_matches_hand_values():
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    alike = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    # the alike Gram [[1, 2], [2, 4]] has both rows normalised to [1, 2]/√5; the apart one is I
    r5 = 5 ** 0.5
    expected = ((1 - 1 / r5) ** 2 + (2 / r5) ** 2 + (1 / r5) ** 2 + (1 - 2 / r5) ** 2) / 4
    assert gram_distance(batch_gram(apart), batch_gram(alike)) == pytest.approx(expected)
    maps = torch.randn(4, 3, 5, 5)
    # width- and resolution-free: the same samples at another width compare, and equal maps give 0
    assert batch_gram(maps).shape == batch_gram(torch.randn(4, 7, 2, 2)).shape == (4, 4)
    assert gram_distance(batch_gram(maps), batch_gram(2 * maps)) == pytest.approx(0.0)


def test_gram_distance_rejects_mismatched_matrices():
    with pytest.raises(ValueError):
        gram_distance(torch.eye(2), torch.eye(3))


def test_class_activation_maps_on_a_hand_case():
    f = torch.zeros(1, 2, 4, 4)
    f[0, 0, :2, :2] = 1.0  # channel 0 lights the top-left quarter
    f[0, 1, 2:, 2:] = 1.0
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0 reads channel 0
    cam0 = class_activation_maps(f, g, torch.tensor([0]), grid=2)
    cam1 = class_activation_maps(f, g, torch.tensor([1]), grid=2)
    assert torch.allclose(cam0, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64))
    assert map_distance(cam0, cam1) == pytest.approx(2.0)
    tokens = f.flatten(2).transpose(1, 2)  # the same map as 16 tokens of 2 channels
    assert torch.allclose(class_activation_maps(tokens, g, torch.tensor([0]), grid=2), cam0)


def test_feature_map_tap_takes_the_map_before_pooling():
    model = build_family(CNN, (1, 8, 8), 10).train()
    tap = FeatureMapTap(batch=3)
    model.head.register_forward_pre_hook(lambda *_: tap.freeze())
    with tap:
        model(torch.randn(3, 1, 8, 8))
    assert tap.feature_map.shape == (3, 16, 4, 4)


def test_diswot_of_the_teacher_with_itself_is_zero(teacher, batch):
    a, b = signals(teacher, batch, seed=5), signals(teacher, batch, seed=5)
    assert gram_distance(a.class_gram, b.class_gram) == 0.0
    assert gram_distance(a.batch_gram, b.batch_gram) == 0.0


def test_diswot_needs_the_teacher_context(batch):
    with pytest.raises(ValueError):
        PROXIES.get("diswot")(build_family(CNN, (1, 8, 8), 10), batch, TeacherContext())
    with pytest.raises(ValueError):  # another batch size than the teacher's signals
        ctx = TeacherContext(batch_size=8, teacher=signals(build_family(CNN, (1, 8, 8), 10), batch, 0))
        PROXIES.get("diswot")(build_family(CNN, (1, 8, 8), 10), batch, ctx)


def test_rank_reference_normalises_the_pool_to_ranks_and_stays_monotone():
    ref = Reference.from_terms([{"t": v} for v in (3.0, 1.0, 2.0, 2.0, 10.0)])
    assert [ref.normalise("t", v) for v in (1.0, 2.0, 3.0, 10.0)] == pytest.approx([0.0, 0.375, 0.75, 1.0])
    xs = [-5.0, 0.0, 1.5, 2.5, 6.0, 20.0]
    ys = [ref.normalise("t", v) for v in xs]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)  # strictly increasing, also past the ends
    assert ref.normalise("unknown", 7.0) == 7.0
    assert Reference.from_json(ref.to_json()) == ref


def test_minmax_reference():
    ref = Reference.from_terms([{"t": 1.0}, {"t": 3.0}], mode="minmax")
    assert ref.normalise("t", 2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Reference({}, mode="zscore")  # type: ignore[arg-type]


def test_multi_term_score_adds_normalised_terms():
    proxy = PROXIES.get("diswot")
    ref = Reference.from_terms([{"diswot_sem": -1.0, "diswot_rel": -1e-4}, {"diswot_sem": -0.5, "diswot_rel": -3e-4}])
    # best semantic but worst relation: each term counts the same after normalisation
    assert proxy.score({"diswot_sem": -0.5, "diswot_rel": -3e-4}, ref) == pytest.approx(0.5)


def test_ensemble_by_name(batch, ctx):
    proxy = get_proxy("params+macs")
    assert set(proxy.weights) == {"params", "macs"}
    assert math.isfinite(proxy(build_family(CNN, (1, 8, 8), 10), batch, ctx))
    with pytest.raises(ValueError):
        get_proxy("params+")
    with pytest.raises(ConfigError):
        get_proxy("params+nope")
    # each member weighs the same: DisWOT's two terms share one member's weight
    assert get_proxy("diswot+snip").weights == {"diswot_sem": 0.5, "diswot_rel": 0.5, "snip": 1.0}


def test_labelled_batch_is_class_balanced_and_seeded():
    from compressor.search import labelled_batch

    x, y = torch.arange(100.0).unsqueeze(1), torch.cat([torch.zeros(70), torch.arange(30) % 3 + 1]).long()
    bx, by = labelled_batch(x, y, 16, seed=3)
    assert len(by) == 16 and torch.bincount(by).min() >= 4  # 4 of each class, however rare
    assert torch.equal(bx, labelled_batch(x, y, 16, seed=3)[0])
    assert not torch.equal(bx, labelled_batch(x, y, 16, seed=4)[0])


def test_zero_head_gradient_equals_backpropagation():
    from compressor.search.diswot import _zero_head_gradient

    h, y = torch.randn(12, 5, dtype=torch.float64), torch.arange(12) % 3
    head = torch.nn.Linear(5, 3).double()
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    torch.nn.functional.cross_entropy(head(h), y).backward()
    assert torch.allclose(_zero_head_gradient(h, y, 3), head.weight.grad)



def test_swap_counts_distinct_sample_wise_patterns(batch, ctx):
    from compressor.search import zero_cost

    class Twins(torch.nn.Module):
        """Two identical rectified units (one pattern), or two independent ones."""

        def __init__(self, same: bool) -> None:
            super().__init__()
            self.same = same
            self.fc = torch.nn.Linear(64, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x.flatten(1))
            if self.same:
                h = h[:, :1].expand(-1, 2)
            return torch.relu(h)

    assert zero_cost.swap(Twins(same=True), batch, ctx)["swap"] == 0.0  # log 1
    assert zero_cost.swap(Twins(same=False), batch, ctx)["swap"] == pytest.approx(math.log(2))


def test_inherited_diswot_compares_the_weights_the_candidate_starts_with(teacher, batch, ctx):
    same = PROXIES.get("diswot_inherited").measure(teacher, batch, ctx)
    assert same == {"diswot_inh_sem": 0.0, "diswot_inh_rel": 0.0}  # the trained teacher against itself
    other = PROXIES.get("diswot_inherited").measure(_students()["cnn"], batch, ctx)
    assert other["diswot_inh_sem"] < 0 and other["diswot_inh_rel"] < 0


def test_stage_grams_read_four_depths(teacher, batch):
    from compressor.search.diswot import STAGES, stage_grams

    grams = stage_grams(teacher, batch, seed=0)
    assert len(grams) == len(STAGES) and all(g.shape == (16, 16) for g in grams)
    assert not torch.equal(grams[0], grams[-1])  # an early map is not the last one
    assert all(torch.equal(a, b) for a, b in zip(grams, stage_grams(teacher, batch, seed=0)))
