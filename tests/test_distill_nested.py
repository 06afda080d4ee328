"""Nested family invariants: prefixes, sliced = masked = extracted, BN recalibration, size choice."""
import logging

import pytest
import torch

from compressor import prune as P
from compressor.distill import FeatureTap, NestedFamily, choose_sizes, recalibrate_bn, size_name
from compressor.distill.bn import batchnorms
from compressor.families import build_family
from compressor.intake.lift import lift_exported
from tiny_models import TinyResidual, randomise_bn

SIZES = [("w100", 1.0), ("w075", 0.75), ("w050", 0.5), ("w025", 0.25)]


def _lifted(model, x):
    return lift_exported(torch.export.export(model.eval(), (x,)).module())[0]


def _nets():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    yield "cnn", build_family({"family": "cnn", "widths": [16, 32], "depths": [2, 2]}, (1, 8, 8), 10), x
    yield "cnn1d", build_family({"family": "cnn", "widths": [16, 24], "depths": [1, 2]}, (40,), 10), torch.randn(6, 40)
    yield "lifted", _lifted(randomise_bn(TinyResidual()), x), x
    yield "transformer", build_family({"family": "transformer", "depth": 2, "dim": 32, "heads": 4,
                                       "mlp_ratio": 2, "patch": 4}, (1, 8, 8), 10), x


NETS = list(_nets())
IDS = [n for n, _, _ in NETS]


def _family(param):
    name, model, x = param
    model.eval()
    groups = P.channel_groups(model, x[:2])
    mixed = {g.key: (0.5 if i % 2 else 0.75) for i, g in enumerate(g for g in groups if g.nestable)}
    return NestedFamily(model, x, [*SIZES, (size_name(mixed), mixed)], groups=groups, round_to=4), x


@pytest.fixture(params=NETS, ids=IDS)
def family(request):
    fam, x = _family(request.param)
    yield fam, x
    fam.remove_masks()


@pytest.fixture(params=[n for n in NETS if n[0] != "transformer"], ids=[i for i in IDS if i != "transformer"])
def bn_family(request):
    fam, x = _family(request.param)
    assert batchnorms(fam.module)
    yield fam, x
    fam.remove_masks()


def test_width_one_is_the_unmasked_ta_bit_for_bit(family):
    fam, x = family
    with torch.no_grad():
        full = fam.module(x)
        fam.set_width(1.0)
        assert torch.equal(fam.module(x), full)
        assert torch.equal(fam.forward("w100", x), full)
        assert torch.equal(fam.extract("w100")(x), full)
    assert fam.subnet("w100").is_full


def test_sliced_masked_and_extracted_agree_at_every_size(family):
    fam, x = family
    for name, ratio in fam.ratios.items():
        dense = fam.extract(name)
        cut = P.materialize(fam.module, x[:2], fam.nestable, ratio, fam.order, fam.round_to).eval()
        with torch.no_grad():
            fam.set_width(ratio)
            masked = fam.module(x)
            fam.set_width(1.0)
            sliced = fam.forward(name, x)
            assert (sliced - masked).abs().max() <= 1e-5
            assert (dense(x) - masked).abs().max() <= 1e-5
            assert (cut(x) - masked).abs().max() <= 1e-5
        assert P.count_params(dense) == P.count_params(cut)
        if name != "w100":
            assert P.count_params(dense) < P.count_params(fam.module)


def test_sliced_equals_masked_in_train_mode_with_batch_statistics(bn_family):
    """The family was built in eval mode (like a lifted teacher); training must still use batch stats."""
    fam, x = bn_family
    saved = {k: v.clone() for k, v in fam.module.state_dict().items()}
    for name in fam.names:
        fam.subnet(name)  # skeletons copied while the TA is in eval mode
    fam.train()
    for name, ratio in fam.ratios.items():
        with torch.no_grad():
            fam.set_width(ratio)
            masked = fam.module(x)
            fam.set_width(1.0)
            sliced = fam.forward(name, x)
        assert fam.subnet(name).skeleton.training
        assert (sliced - masked).abs().max() <= 1e-5
    fam.train(False)
    fam.module.load_state_dict(saved)


def test_sizes_are_prefixes_of_one_importance_order(family):
    fam, _ = family
    counts = [fam.keep_counts(r) for _, r in SIZES]
    for wide, narrow in zip(counts, counts[1:]):
        assert all(narrow[k] <= wide[k] for k in wide)
    for g in fam.nestable:  # the channels a size keeps are the first k of the group's order
        k = counts[2][g.key]
        assert P.kept_channels(g, 0.5, fam.order, fam.round_to) == sorted(fam.order[g.key][:k])


def test_sliced_gradients_land_in_the_ta_on_kept_channels_only():
    torch.manual_seed(0)
    model = build_family({"family": "cnn", "widths": [16, 32], "depths": [1, 1]}, (1, 8, 8), 10)
    x = torch.randn(4, 1, 8, 8)
    fam = NestedFamily(model, x, [("w050", 0.5)], round_to=8)
    fam.forward("w050", x).square().sum().backward()
    conv = model.features[0].conv
    g = fam.nestable[[grp.key for grp in fam.nestable].index("features.0.conv")]
    kept = P.kept_channels(g, 0.5, fam.order, 8)
    rows = conv.weight.grad.abs().flatten(1).sum(1)
    assert (rows[kept] > 0).all()
    assert float(rows[[i for i in range(16) if i not in kept]].sum()) == 0.0


def test_recalibration_matches_masked_recalibration(bn_family):
    fam, x = bn_family
    calib = torch.randn(64, *x.shape[1:])
    saved = {k: v.clone() for k, v in fam.module.state_dict().items()}
    dense = fam.extract("w050", calib, batch_size=32)
    fam.set_width(0.5)
    recalibrate_bn(fam.module, calib, batch_size=32)
    with torch.no_grad():
        assert (dense(x) - fam.module.eval()(x)).abs().max() <= 1e-5
    fam.set_width(1.0)
    fam.module.load_state_dict(saved)


def test_recalibration_resets_and_recomputes_running_stats():
    torch.manual_seed(0)
    model = build_family({"family": "cnn", "widths": [8], "depths": [1]}, (1, 8, 8), 10).eval()
    bn = model.features[0].bn
    bn.running_mean.fill_(5.0)
    calib = torch.randn(64, 1, 8, 8) * 3 + 1
    recalibrate_bn(model, calib, batch_size=16)
    with torch.no_grad():
        pre = model.features[0].conv(calib)
    expected = torch.stack([pre[i:i + 16].mean((0, 2, 3)) for i in range(0, 64, 16)]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training  # settings restored


def test_feature_taps_find_the_map_before_pooling():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    cnn = build_family({"family": "cnn", "widths": [8, 16], "depths": [1, 1]}, (1, 8, 8), 10).eval()
    tr = build_family({"family": "transformer", "depth": 1, "dim": 16, "heads": 2, "patch": 4}, (1, 8, 8), 10).eval()
    lifted = _lifted(randomise_bn(TinyResidual()), x)
    for model, kind, shape in ((cnn, "hook", (3, 16, 4, 4)), (tr, "hook", (3, 16, 4)), (lifted, "graph", (3, 24, 8, 8))):
        tap = FeatureTap(model, x)
        with torch.no_grad():
            logits, features = tap(x)
            assert torch.equal(logits, model(x))
        assert tap.kind == kind and tuple(features.shape) == shape


def _fake_latency(example):
    return lambda m: P.count_macs(m, example) / 1e4  # "ms" proportional to MACs: monotone in width


@pytest.mark.parametrize("student_ratio", [None, 0.6])
def test_choose_sizes_spreads_from_budget_to_ta(student_ratio):
    torch.manual_seed(0)
    ta = build_family({"family": "cnn", "widths": [32, 64], "depths": [1, 1]}, (1, 8, 8), 10).eval()
    x = torch.randn(2, 1, 8, 8)
    groups = P.channel_groups(ta, x)
    order = P.importance_order(ta, x, groups)
    lat = _fake_latency(x[:1])
    budget = 0.3 * lat(ta)
    sizes = choose_sizes(ta, x, groups, order, lat, budget, n=4, student_ratio=student_ratio, margin=0.8)
    ratios = [r for _, r in sizes]
    times = [lat(P.materialize(ta, x, groups, r, order, 8)) for r in ratios]
    assert ratios[0] == 1.0 and len(sizes) in (4, 4 + (student_ratio is not None))
    assert all(a > b for a, b in zip(times, times[1:]))  # strictly faster, largest first
    assert times[-1] <= 0.8 * budget
    wider = P.materialize(ta, x, groups, ratios[-1] + 1 / 64, order, 8)  # the smallest is the widest that fits
    assert lat(wider) > 0.8 * budget or P.count_params(wider) == P.count_params(
        P.materialize(ta, x, groups, ratios[-1], order, 8))
    # and one size is the widest predicted within the budget itself
    fitting = max(r for r, t in zip(ratios, times) if t <= budget)
    grid = sorted({r for r in (k / 64 for k in range(1, 65))
                   if lat(P.materialize(ta, x, groups, r, order, 8)) <= budget})
    assert P.count_params(P.materialize(ta, x, groups, fitting, order, 8)) == \
        P.count_params(P.materialize(ta, x, groups, grid[-1], order, 8))
    if student_ratio is not None:
        assert ("w060", 0.6) in sizes
    assert len({n for n, _ in sizes}) == len(sizes) and all(n.startswith("w") for n, _ in sizes)


def test_choose_sizes_warns_when_nothing_fits(caplog):
    ta = build_family({"family": "cnn", "widths": [16], "depths": [1]}, (1, 8, 8), 10).eval()
    x = torch.randn(2, 1, 8, 8)
    groups = P.channel_groups(ta, x)
    with caplog.at_level(logging.WARNING):
        sizes = choose_sizes(ta, x, groups, P.importance_order(ta, x, groups), lambda m: 100.0, 1.0, n=3)
    assert sizes[-1][1] < 1.0 and "over" in caplog.text


def test_choose_sizes_spans_below_a_ta_that_fits():
    torch.manual_seed(0)
    ta = build_family({"family": "cnn", "widths": [32, 64], "depths": [1, 1]}, (1, 8, 8), 10).eval()
    x = torch.randn(2, 1, 8, 8)
    groups = P.channel_groups(ta, x)
    lat = _fake_latency(x[:1])
    sizes = choose_sizes(ta, x, groups, P.importance_order(ta, x, groups), lat, 10 * lat(ta), n=4)
    times = [lat(P.materialize(ta, x, groups, r, None, 8)) for _, r in sizes]
    assert sizes[0][1] == 1.0 and len(sizes) >= 3  # not one size: faster ones below the TA
    assert times[-1] <= 0.4 * lat(ta) + 1e-9
