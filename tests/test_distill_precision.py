"""Training precision: which arithmetic the forward passes run in, chosen per CPU and never silently."""
import pytest
import torch

from compressor.distill import DistillConfig, train_family
from compressor.distill import precision as prec
from compressor.distill.train import CHECKPOINT
from compressor.errors import ConfigError
from compressor.families import build_family
from stand_ins import StopAt

SIZES = [("w100", 1.0), ("w050", 0.5)]
TA_ARCH = {"family": "cnn", "widths": [16, 32], "depths": [1, 1]}


@pytest.fixture(scope="module")
def small(digits8):
    return type(digits8)(digits8.name, digits8.x_train[:512], digits8.y_train[:512], digits8.x_val,
                         digits8.y_val, digits8.num_classes)


def _nets():
    torch.manual_seed(0)
    teacher = build_family({"family": "cnn", "widths": [16, 32], "depths": [1, 2]}, (1, 8, 8), 10).eval()
    return teacher, build_family(TA_ARCH, (1, 8, 8), 10)


def test_auto_takes_bfloat16_only_on_a_cpu_that_multiplies_it_in_hardware(monkeypatch):
    for has in ({"_is_amx_tile_supported"}, {"_is_avx512_bf16_supported"}):
        monkeypatch.setattr(prec, "_supported", lambda name, has=has: name in has)
        precision, why = prec.resolve_precision("auto", "cpu")
        assert precision == "bf16" and ("AMX" in why or "AVX-512 BF16" in why)
        assert prec.resolve_precision("auto", "cuda")[0] == "fp32"  # not measured on a GPU
    monkeypatch.setattr(prec, "_supported", lambda name: False)  # AVX2 only: bfloat16 in software
    precision, why = prec.resolve_precision("auto", "cpu")
    assert precision == "fp32" and "software" in why
    assert prec.resolve_precision("bf16", "cpu") == ("bf16", "asked for")  # asked for: anywhere
    assert prec.resolve_precision("fp32", "cpu") == ("fp32", "asked for")
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        prec.resolve_precision("fp16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        DistillConfig(precision="int8")


def test_forward_passes_run_in_the_precision_asked_for_and_the_weights_stay_float32(small, tmp_path):
    runs, seen = {}, {}
    for precision in ("fp32", "bf16"):
        teacher, ta = _nets()
        seen[precision] = set()
        hooks = [net.register_forward_hook(lambda m, i, o, p=precision: seen[p].add(o.dtype)) for net in (teacher, ta)]
        cfg = DistillConfig(epochs=4, batch_size=32, bn_calib_samples=64, lr=1e-2, precision=precision)
        runs[precision] = r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path / precision)
        for h in hooks:
            h.remove()
        assert r.precision == precision
        assert all(p.dtype == torch.float32 for p in ta.parameters())
        assert all(p.dtype == torch.float32 for m in r.models.values() for p in m.parameters())
    assert torch.bfloat16 in seen["bf16"] and torch.bfloat16 not in seen["fp32"]
    # the same recipe learns alike in either arithmetic (chance is 0.1)
    for name in ("w100", "w050"):
        assert runs["fp32"].val_acc[name] > 0.5
        assert runs["bf16"].val_acc[name] == pytest.approx(runs["fp32"].val_acc[name], abs=0.05)
    assert runs["bf16"].history[-1]["loss"] == pytest.approx(runs["fp32"].history[-1]["loss"], rel=0.05)


def test_a_run_checkpointed_in_one_precision_resumes_in_the_other(small, tmp_path):
    """The precision follows the machine, so a run resumed on another machine goes on in its own."""
    teacher, ta = _nets()
    with pytest.raises(KeyboardInterrupt):
        train_family(teacher, ta, small, sizes=SIZES, run_dir=tmp_path, progress=StopAt(1, KeyboardInterrupt),
                     config=DistillConfig(epochs=2, bn_calib_samples=64, precision="fp32"))
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 1
    teacher, ta = _nets()
    r = train_family(teacher, ta, small, sizes=SIZES, run_dir=tmp_path, resume=True,
                     config=DistillConfig(epochs=2, bn_calib_samples=64, precision="bf16"))
    assert [h["epoch"] for h in r.history] == [1, 2] and r.history[0] == ckpt["history"][0]
    assert r.precision == "bf16"


def test_single_student_distillation_trains_in_the_precision_asked_for(small):
    from compressor.distill import KDConfig, distill_single

    accs = {}
    for precision in ("fp32", "bf16"):
        teacher, student = _nets()
        seen = set()
        hook = student.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        history = distill_single(student, teacher, small, KDConfig(epochs=3, lr=1e-2, precision=precision))
        hook.remove()
        assert (torch.bfloat16 in seen) == (precision == "bf16")
        assert all(p.dtype == torch.float32 for p in student.parameters())
        accs[precision] = history[-1]["val_acc"]
    assert accs["bf16"] == pytest.approx(accs["fp32"], abs=0.05) and accs["fp32"] > 0.5


def test_a_convolution_striding_over_one_pixel_keeps_float32(monkeypatch):
    """A 3x3 stride-2 convolution on a 1x1 map: its bfloat16 backward pass gave NaN gradients on an
    AVX-512 BF16 CPU, so `auto` trains such a network in float32 on every CPU."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.Conv2d(8, 8, 3, 2, 1))
    net.train()
    before = net[1].running_mean.clone()
    assert prec.one_pixel_strides([(net, torch.randn(2, 1, 4, 4))]) == ["4"]  # 4 -> 2 -> 1, then strided
    assert net.training and torch.equal(net[1].running_mean, before)  # checked in eval mode, mode restored
    assert prec.one_pixel_strides([(net, torch.randn(2, 1, 8, 8))]) == []  # 8 -> 4 -> 2 -> 1: no stride over 1
    monkeypatch.setattr(prec, "_supported", lambda name: name == "_is_avx512_bf16_supported")
    precision, why = prec.resolve_precision("auto", "cpu", [(net, torch.randn(2, 1, 4, 4))])
    assert precision == "fp32" and "4" in why and "1-pixel" in why
    assert prec.resolve_precision("auto", "cpu", [(net, torch.randn(2, 1, 8, 8))])[0] == "bf16"
    assert prec.resolve_precision("bf16", "cpu", [(net, torch.randn(2, 1, 4, 4))]) == ("bf16", "asked for")
    scripted = torch.jit.script(torch.nn.Conv2d(1, 2, 3, 2, 1))  # cannot be hooked: skipped, not an error
    assert prec.one_pixel_strides([(scripted, torch.randn(2, 1, 1, 1))]) == []


def test_a_bfloat16_step_with_non_finite_gradients_is_skipped_and_the_run_goes_on_in_float32(small, tmp_path):
    teacher, ta = _nets()
    poisoned = next(ta.parameters())
    calls = {"n": 0}

    def nan_once(grad):  # what the untrusted bfloat16 kernel did: one step's gradient NaN, the loss finite
        calls["n"] += 1
        return torch.full_like(grad, float("nan")) if calls["n"] == 3 else grad
    handle = poisoned.register_hook(nan_once)
    cfg = DistillConfig(epochs=2, batch_size=32, bn_calib_samples=64, lr=1e-2, precision="bf16")
    r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path)
    handle.remove()
    assert calls["n"] > 3  # the poisoned step was not the last
    assert r.precision == "bf16" and r.precision_fallback_epoch == 1
    assert all(torch.isfinite(p).all() for p in ta.parameters())  # the NaN never reached a weight
    assert all(torch.isfinite(p).all() for m in r.models.values() for p in m.parameters())
    assert r.val_acc["w100"] > 0.3 and r.rollbacks == []


def test_single_distillation_skips_a_non_finite_bfloat16_step_too(small):
    from compressor.distill.single import KDConfig, distill_single
    teacher, student = _nets()
    calls = {"n": 0}

    def nan_once(grad):
        calls["n"] += 1
        return torch.full_like(grad, float("nan")) if calls["n"] == 2 else grad
    handle = next(student.parameters()).register_hook(nan_once)
    history = distill_single(student, teacher, small, KDConfig(epochs=1, batch_size=32, precision="bf16"))
    handle.remove()
    assert calls["n"] > 2 and len(history) == 1
    assert all(torch.isfinite(p).all() for p in student.parameters())
