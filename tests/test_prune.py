import pytest
import torch

from compressor import prune as P
from compressor.families import build_family
from compressor.intake.lift import lift_exported
from tiny_models import TinyResidual, randomise_bn


class Grouped(torch.nn.Module):
    """A RegNet/ResNeXt bottleneck: 1x1, 3x3 in 4 groups of 8, 1x1, identity skip."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.fc(x.mean((2, 3)))


def _lifted(model, x):
    return lift_exported(torch.export.export(model.eval(), (x,)).module())[0]


def _nets():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    yield "module", randomise_bn(TinyResidual()), x
    yield "lifted", _lifted(randomise_bn(TinyResidual()), x), x
    yield "grouped", randomise_bn(Grouped()), x
    yield "cnn", build_family({"family": "cnn", "widths": [16, 32], "depths": [2, 2]}, (1, 8, 8), 10), x
    yield "cnn1d", build_family({"family": "cnn", "widths": [16, 24], "depths": [1, 2]}, (40,), 10), torch.randn(6, 40)
    yield "transformer", build_family({"family": "transformer", "depth": 2, "dim": 32, "heads": 4,
                                       "mlp_ratio": 2, "patch": 4}, (1, 8, 8), 10), x


@pytest.mark.parametrize("name,model,x", list(_nets()), ids=lambda v: v if isinstance(v, str) else "")
def test_mask_equals_cut_at_every_width(name, model, x):
    groups = P.channel_groups(model, x[:2])
    order = P.importance_order(model, x[:2], groups)
    masker = P.ChannelMasker(model, groups, order, round_to=4)
    model.eval()
    with torch.no_grad():
        full = model(x)
    masker.set_width(1.0)
    with torch.no_grad():
        assert torch.equal(model(x), full)  # width 1.0 is the unmasked network, bit for bit
    nestable = [g for g in groups if g.nestable]
    for r in (0.75, 0.5, 0.25):
        masker.set_width(r)
        with torch.no_grad():
            masked = model(x)
        dense = P.materialize(model, x[:2], nestable, r, order, round_to=4)
        assert P.count_params(dense) < P.count_params(model)
        with torch.no_grad():
            assert (dense(x) - masked).abs().max() <= 1e-5
    masker.remove()


def test_keep_count_rounds_to_multiple():
    assert P.keep_count(160, 0.5, 8) == 80
    assert P.keep_count(160, 0.33, 8) == 56
    assert P.keep_count(6, 0.5, 8) == 6  # too small to cut at this multiple
    assert P.keep_count(64, 0.01, 8) == 8
    assert P.keep_count(32, 0.5, 1, unit=8) == 16  # whole heads
    with pytest.raises(ValueError):
        P.keep_count(8, 0.0)


def test_grouped_convolutions_are_cut_in_whole_groups():
    model, x = randomise_bn(Grouped()).eval(), torch.randn(2, 1, 8, 8)
    groups = P.channel_groups(model, x)
    # conv1's outputs, the grouped conv's inputs and outputs are one group, cut 8 channels (one group) at a time
    (grouped,) = [g for g in groups if "body.3" in g.layers]
    assert grouped.unit == 8 and {"body.0", "body.3", "body.6"} <= set(grouped.layers)
    for r in (0.25, 0.5, 0.75):
        dense = P.materialize(model, x, groups, {grouped.key: r}, P.importance_order(model, x, groups))
        conv = dense.body[3]
        assert (conv.groups, conv.in_channels, conv.out_channels) == (int(4 * r), int(32 * r), int(32 * r))
        assert dense(x).shape == (2, 10)


def test_attention_groups_cut_whole_heads():
    m = build_family({"family": "transformer", "depth": 1, "dim": 32, "heads": 4, "patch": 4}, (1, 8, 8), 10)
    groups = P.channel_groups(m, torch.randn(2, 1, 8, 8))
    attn = [g for g in groups if "attn" in g.key]
    assert attn and all(g.unit == 8 for g in attn)
    emb = [g for g in groups if not g.nestable]
    assert emb  # the embedding width passes through layer norms: not nested


def test_a_lifted_torchscript_vit_still_cuts_whole_heads(tmp_path):
    """A TorchScript teacher loses the attention module's `head_dim`; the reshape into heads
    (``[B, T, -1, 8]``) still says how wide a head is, and a cut at any ratio keeps whole heads."""
    from compressor.intake.teacher import load_teacher

    torch.manual_seed(0)
    vit = build_family({"family": "transformer", "depth": 2, "dim": 32, "heads": 4, "patch": 4}, (1, 8, 8), 10).eval()
    x = torch.randn(2, 1, 8, 8)
    path = tmp_path / "vit.pt"
    torch.jit.save(torch.jit.trace(vit, x), str(path))
    lifted = load_teacher(path, x, 10).module
    groups = P.channel_groups(lifted, x)
    heads = [g for g in groups if any("attn_q" in m.module for m in g.members)]
    assert len(heads) == 2 and all(g.unit == 8 for g in heads)
    assert all(g.unit == 1 for g in groups if g not in heads)  # the residual width and the MLP: single channels
    for ratio in (0.3, 0.6, 0.85):  # keeps 8, 16, 24 of 32 channels: whole heads, never 10 or 19
        cut = P.materialize(lifted, x, heads, ratio)
        assert cut(x).shape == (2, 10)


@pytest.mark.parametrize("round_to", [8, 16])
def test_keep_count_keeps_a_whole_group_whatever_the_multiple(round_to):
    # 40 channels are not a multiple of 16: at ratio 1.0 they stay 40 on every CPU class
    assert P.keep_count(40, 1.0, round_to) == 40
    assert P.keep_count(40, 0.5, round_to) % round_to == 0


class LayerScaled(torch.nn.Module):
    """ConvNeXt's pattern: ``x + gamma * f(x)`` with `gamma` a bare per-channel parameter (layer scale)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.GELU(), nn.Conv2d(16, 16, 1))
        self.gamma = nn.Parameter(torch.full((16,), 0.5))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.gamma.reshape(1, -1, 1, 1) * self.body(x)
        return self.fc(x.mean((2, 3)))


def test_a_torchscript_teachers_bare_weights_train_and_cut_with_their_channels(tmp_path):
    """TorchScript hands a bare weight (layer scale, a position embedding) over as a plain tensor: lifted
    as a buffer it would stay frozen in distillation and Torch-Pruning could not cut the channels it scales."""
    from compressor.intake.teacher import load_teacher

    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    path = tmp_path / "layer_scaled.pt"
    torch.jit.save(torch.jit.trace(LayerScaled().eval(), x), str(path))
    lifted = load_teacher(path, x, 10).module
    scales = [(n, p) for n, p in lifted.named_parameters() if p.shape == (16,) and torch.all(p == 0.5)]
    assert len(scales) == 1 and scales[0][1].requires_grad
    stream = [g for g in P.channel_groups(lifted, x) if g.key.startswith("stem")]
    assert len(stream) == 1
    cut = P.materialize(lifted, x, stream, 0.5)
    assert cut(x).shape == (2, 10)
    assert dict(cut.named_parameters())[scales[0][0]].shape == (8,)
