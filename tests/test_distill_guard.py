"""Training that diverges goes back to its best epoch and continues at a lower learning rate."""
import logging
import math

import pytest
import torch

from compressor.distill import DistillConfig, train_family
from compressor.distill.guard import DivergenceGuard
from compressor.distill.single import KDConfig, distill_single
from compressor.distill.train import CHECKPOINT, _Trainer
from compressor.families import build_family

SIZES = [("w100", 1.0), ("w050", 0.5)]
TA_ARCH = {"family": "cnn", "widths": [16, 32], "depths": [1, 1]}
TEACHER_ARCH = {"family": "cnn", "widths": [16, 32], "depths": [1, 2]}


@pytest.fixture(scope="module")
def small(digits8):
    return type(digits8)(digits8.name, digits8.x_train[:256], digits8.y_train[:256], digits8.x_val,
                         digits8.y_val, digits8.num_classes)


def _optimizer():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([w], lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    return w, opt, sched


def test_a_collapse_toward_chance_or_a_non_finite_loss_is_divergence_and_rates_scale_from_the_kept_state():
    w, opt, sched = _optimizer()
    guard = DivergenceGuard(chance=0.1, collapse=0.5, backoff=0.3, max_rollbacks=2)
    guard.start({"w": w.detach().clone(), "opt": opt.state_dict()}, 0)
    assert not guard.diverged(5.0, 0.0)  # nothing to collapse from yet
    opt.step()
    sched.step()
    guard.keep(2.0, 0.9, lambda: {"w": torch.ones(3), "opt": opt.state_dict()}, 1)
    kept = dict(opt.param_groups[0])
    # a loss that rises while accuracy holds is a warm-up bump that networks recover from, not divergence
    assert not guard.diverged(3.0, 0.85) and not guard.diverged(2.0, 0.55) and not guard.diverged(2.0, None)
    assert guard.diverged(2.0, 0.45)  # kept less than half of its margin over chance (0.35 of 0.8)
    assert guard.diverged(float("nan")) and guard.diverged(float("inf"), 0.9)

    restored = []

    def restore(state):
        restored.append(state["w"])
        opt.load_state_dict(state["opt"])

    for _ in range(3):
        opt.step()
        sched.step()  # the rates move on, as they do in the epoch that diverges
    event = guard.rollback(2.6, 0.2, 2, restore, opt)
    assert torch.equal(restored[-1], torch.ones(3)) and event == {
        "epoch": 2, "loss": 2.6, "best_loss": 2.0, "accuracy": 0.2, "best_accuracy": 0.9, "back_to": 1,
        "lr_scale": pytest.approx(0.3)}
    assert "accuracy 20.0%, best 90.0%" in guard.describe(event) and "back to the end of epoch 1" in guard.describe(event)
    for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # the schedule's every rate, from the kept state's
        assert opt.param_groups[0][key] == pytest.approx(0.3 * kept[key])
    guard.rollback(float("nan"), None, 2, restore, opt)  # the same kept state again: scaled from its rates, not twice
    for key in ("lr", "initial_lr", "max_lr", "min_lr"):
        assert opt.param_groups[0][key] == pytest.approx(0.09 * kept[key])
    assert guard.events[-1]["loss"] == "nan" and "loss nan" in guard.describe(guard.events[-1])
    assert not guard.diverged(float("nan"))  # two rollbacks were allowed: the last
    again = DivergenceGuard()
    again.load_state(guard.state())
    assert again.scale == pytest.approx(0.09) and again.events == guard.events and again.best_accuracy == 0.9


def test_the_starting_accuracy_counts_so_a_collapse_within_the_first_epoch_is_seen():
    guard = DivergenceGuard(chance=0.1)
    guard.start({"w": torch.zeros(1)}, 0, accuracy=0.95)  # cut from a teacher: starts near its accuracy
    assert guard.diverged(3.0, 0.18) and not guard.diverged(3.0, 0.6)
    fresh = DivergenceGuard(chance=0.1)
    fresh.start({"w": torch.zeros(1)}, 0, accuracy=0.16)  # a new network starts near chance: nothing to lose
    assert not fresh.diverged(3.0, 0.05)
    fresh.keep(2.0, 0.4, lambda: {"w": torch.ones(1)}, 1)  # 0.3 above chance: over a quarter of the 0.9 of room
    assert fresh.diverged(2.0, 0.2) and not fresh.diverged(2.0, 0.3)


def test_a_collapse_in_the_first_epoch_goes_back_to_the_start(small, tmp_path, monkeypatch, caplog):
    from compressor.distill import train as T

    torch.manual_seed(0)
    teacher = build_family(TEACHER_ARCH, (1, 8, 8), 10).eval()
    torch.manual_seed(1)
    ta = build_family(TA_ARCH, (1, 8, 8), 10)
    start = {k: v.clone() for k, v in ta.state_dict().items()}
    steps = len(small.x_train) // 64
    measured = []

    def start_accuracy(model, x, y):  # as if the TA had been cut from a trained teacher
        measured.append((len(x), model.training))
        return 0.9

    original = _Trainer._count_hits
    calls = {"hits": 0, "steps": 0}

    def count_hits(self, logits, y):  # the first pass's answers all wrong, every later one right
        calls["hits"] += 1
        right = torch.nn.functional.one_hot(y, logits.shape[1]).float()
        return original(self, -right if calls["hits"] <= steps else right, y)

    monkeypatch.setattr(T, "start_accuracy", start_accuracy)
    monkeypatch.setattr(_Trainer, "_count_hits", count_hits)
    starts = []  # the TA's weights at the start of each pass over the data
    original_step = _Trainer._step

    def step(trainer, idx):
        if calls["steps"] % steps == 0:
            starts.append({k: v.clone() for k, v in trainer.ta.state_dict().items()})
        calls["steps"] += 1
        return original_step(trainer, idx)

    monkeypatch.setattr(_Trainer, "_step", step)
    with caplog.at_level(logging.WARNING):
        r = train_family(teacher, ta, small, sizes=SIZES, config=DistillConfig(epochs=2, bn_calib_samples=64),
                         run_dir=tmp_path)
    assert measured and measured[0][0] == min(256, len(small.x_train))
    assert "training diverged in epoch 1" in caplog.text and "back to the end of epoch 0" in caplog.text
    assert r.rollbacks[0]["best_accuracy"] == 0.9 and [h["epoch"] for h in r.history] == [1, 2]
    assert len(starts) == 3  # epoch 1, epoch 1 again, epoch 2: the second pass starts from the start
    assert all(torch.equal(starts[1][k], starts[0][k]) for k in start) and len(r.rollbacks) == 1
    assert any(not torch.equal(starts[2][k], start[k]) for k in start)  # and it trained after that


def test_nested_training_goes_back_and_continues_at_a_lower_rate_kept_in_its_checkpoint(small, tmp_path,
                                                                                      monkeypatch, caplog):
    torch.manual_seed(0)
    teacher = build_family(TEACHER_ARCH, (1, 8, 8), 10).eval()
    torch.manual_seed(1)
    ta = build_family(TA_ARCH, (1, 8, 8), 10)
    cfg = DistillConfig(epochs=3, batch_size=64, bn_calib_samples=64, eval_every=1)
    steps = len(small.x_train) // 64
    original = _Trainer._step
    calls = {"n": 0}
    starts: list[dict] = []  # the TA's weights at the start of each pass over the data

    def step(trainer, idx):  # the loss epoch 2's first pass reports is not a number
        if calls["n"] % steps == 0:
            starts.append({k: v.clone() for k, v in trainer.ta.state_dict().items()})
        loss = original(trainer, idx)
        calls["n"] += 1
        return float("nan") if steps < calls["n"] <= 2 * steps else loss

    monkeypatch.setattr(_Trainer, "_step", step)
    with caplog.at_level(logging.WARNING):
        r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path)
    assert "training diverged in epoch 2" in caplog.text and "back to the end of epoch 1" in caplog.text
    assert [h["epoch"] for h in r.history] == [1, 2, 3] and all(math.isfinite(h["loss"]) for h in r.history)
    assert len(r.rollbacks) == 1 and r.rollbacks[0]["epoch"] == 2 and r.rollbacks[0]["lr_scale"] == pytest.approx(0.3)
    event = r.rollbacks[0]  # the TA's training accuracy of both epochs was counted
    assert 0 <= event["accuracy"] <= 1 and 0 <= event["best_accuracy"] <= 1 and event["loss"] == "nan"
    # four passes (1, 2 spiked, 2 again, 3): the second run of epoch 2 starts from the weights the first
    # did, so the spiked pass's training was undone (and training goes on after it)
    assert calls["n"] == 4 * steps and len(starts) == 4
    assert all(torch.equal(starts[1][k], starts[2][k]) for k in starts[1])
    assert any(not torch.equal(starts[2][k], starts[3][k]) for k in starts[2])
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["guard"]["scale"] == pytest.approx(0.3) and len(ckpt["guard"]["events"]) == 1
    assert ckpt["optimizer"]["param_groups"][0]["max_lr"] == pytest.approx(0.3 * cfg.lr)


def test_single_student_distillation_goes_back_too(small, monkeypatch, caplog):
    from compressor.distill import single

    torch.manual_seed(0)
    teacher = build_family(TEACHER_ARCH, (1, 8, 8), 10).eval()
    torch.manual_seed(1)
    student = build_family(TA_ARCH, (1, 8, 8), 10)
    steps = len(small.x_train) // 64
    calls = {"n": 0}
    original = single.kd_loss

    def spiking(*args):  # epoch 2's first pass: the loss, its gradients and so the weights become NaN
        calls["n"] += 1
        loss = original(*args)
        return loss * float("nan") if steps < calls["n"] <= 2 * steps else loss

    monkeypatch.setattr(single, "kd_loss", spiking)
    with caplog.at_level(logging.WARNING):
        history = distill_single(student, teacher, small, KDConfig(epochs=3, seed=0))
    assert "training diverged in epoch 2" in caplog.text
    assert [h["epoch"] for h in history] == [1, 2, 3] and calls["n"] == 4 * steps
    assert all(math.isfinite(h["loss"]) for h in history)  # the NaN weights of the first pass were undone
    assert all(torch.isfinite(p).all() for p in student.parameters())
