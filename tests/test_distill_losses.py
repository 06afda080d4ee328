"""Contract suite for the distillation loss zoo, bound to every registered loss."""
import math

import pytest
import torch

from compressor.distill import LOSSES, Out, build_loss, kd_kl
from compressor.errors import ConfigError

B, K = 8, 10


def _outs(student_width: int = 6, teacher_width: int = 12, spatial: tuple[int, ...] = (4, 4), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (B,), generator=g)

    def out(width: int) -> Out:
        return Out(torch.randn(B, K, generator=g).requires_grad_(),
                   torch.randn(B, width, *spatial, generator=g).requires_grad_(), y)

    return out(student_width), out(teacher_width)


def test_registry_holds_the_documented_losses():
    assert {"kd", "fitnets", "rkd", "sp", "diswot_semantic", "ttm", "dkd"} <= set(LOSSES.names())


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("spatial", [(4, 4), (7,), ()], ids=["map2d", "map1d", "pooled"])
def test_finite_scalar_and_gradients_reach_only_the_student(name, spatial):
    student, teacher = _outs(spatial=spatial)
    loss_fn = build_loss(name, student, teacher)
    value = loss_fn(student, teacher)
    assert value.dim() == 0 and math.isfinite(float(value.detach()))
    value.backward()
    assert teacher.logits.grad is None and teacher.features.grad is None
    grads = [t.grad for t in (student.logits, student.features) if t.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    for p in loss_fn.parameters():  # learned adapters train with the student
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_zero_at_its_minimizer(name):
    student, teacher = _outs(student_width=12, teacher_width=12)  # same width: adapters start as identity
    loss_fn = build_loss(name, student, teacher)
    with torch.no_grad():
        assert abs(float(loss_fn(loss_fn.minimizer(teacher), teacher))) < 1e-5
        assert float(loss_fn(student, teacher)) > 1e-4  # and not zero everywhere


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_runs_at_a_different_resolution(name):
    student, _ = _outs(spatial=(4, 4))
    _, teacher = _outs(spatial=(8, 8), seed=1)
    loss_fn = build_loss(name, student, teacher)
    assert math.isfinite(float(loss_fn(student, teacher).detach()))


def test_kd_is_temperature_squared_kl():
    s, t = torch.randn(4, K), torch.randn(4, K)
    tau = 3.0
    p = torch.softmax(t / tau, 1)
    expected = (p * (p.log() - torch.log_softmax(s / tau, 1))).sum(1).mean() * tau ** 2
    assert torch.allclose(kd_kl(s, t, tau), expected, atol=1e-6)
    assert torch.allclose(build_loss("kd", Out(s), Out(t), temperature=tau)(Out(s), Out(t)), expected, atol=1e-6)


def test_ttm_puts_the_temperature_on_the_teacher_only():
    t = torch.randn(4, K)
    loss = build_loss("ttm", Out(t), Out(t), temperature=2.0)
    assert float(loss(Out(t), Out(t))) > 1e-3  # matching raw logits is not the target
    assert float(loss(Out(t / 2.0), Out(t))) < 1e-6


def test_dkd_splits_target_from_non_target():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(B, dtype=torch.long)  # class 0 is every sample's target
    s, t = torch.randn(B, K, generator=g), torch.randn(B, K, generator=g)
    shuffled = torch.cat([s[:, :1], s[:, 1:].roll(1, dims=1)], 1)  # non-target logits permuted
    tckd = build_loss("dkd", Out(s), Out(t), alpha=1.0, beta=0.0)
    nckd = build_loss("dkd", Out(s), Out(t), alpha=0.0, beta=1.0)
    # the target-vs-rest term sees only p(target); the non-target term sees the rest's shape
    assert torch.allclose(tckd(Out(s, labels=y), Out(t, labels=y)), tckd(Out(shuffled, labels=y), Out(t, labels=y)))
    assert not torch.allclose(nckd(Out(s, labels=y), Out(t, labels=y)), nckd(Out(shuffled, labels=y), Out(t, labels=y)))


def test_unknown_loss_suggests_close_names():
    s, t = _outs()
    with pytest.raises(ConfigError, match="did you mean fitnets"):
        build_loss("fitnet", s, t)


def test_feature_losses_need_features():
    s, t = _outs()
    with pytest.raises(ConfigError, match="needs feature maps"):
        build_loss("fitnets", s, Out(t.logits))
