"""A long nested run whose validation accuracy stops improving cools down and ends early."""
import copy
import math

import pytest
import torch

from compressor.distill import DistillConfig, train_family
from compressor.distill import train as T
from compressor.distill.plateau import Cooldown, PlateauRule
from compressor.distill.train import CHECKPOINT, _Trainer
from compressor.families import build_family
from stand_ins import StopAt

SIZES = [("w100", 1.0), ("w050", 0.5)]
TA_ARCH = {"family": "cnn", "widths": [8, 16], "depths": [1, 1]}
TEACHER_ARCH = {"family": "cnn", "widths": [16, 32], "depths": [1, 1]}
# a short run the rule applies to: validation every 2 epochs past the peak, a 2-epoch cooldown
RULE = PlateauRule(min_epochs=8, every_share=1 / 6, cooldown_share=1 / 6)


@pytest.fixture(scope="module")
def small(digits8):
    return type(digits8)(digits8.name, digits8.x_train[:256], digits8.y_train[:256], digits8.x_val,
                         digits8.y_val, digits8.num_classes)


def _nets():
    torch.manual_seed(0)
    teacher = build_family(TEACHER_ARCH, (1, 8, 8), 10).eval()
    torch.manual_seed(1)
    return teacher, build_family(TA_ARCH, (1, 8, 8), 10)


def _scripted(monkeypatch, accuracies):
    """Validation reports `accuracies(epoch)` for every size (the models are the real ones)."""
    original = _Trainer.evaluate

    def evaluate(trainer):
        models, acc = original(trainer)
        return models, {n: accuracies(trainer.epoch + 1) for n in acc}

    monkeypatch.setattr(_Trainer, "evaluate", evaluate)
    monkeypatch.setattr(T, "PlateauRule", lambda: RULE)


class Stop(Exception):
    pass


def _cfg(**kw):
    return DistillConfig(**{"epochs": 12, "batch_size": 64, "bn_calib_samples": 64, "eval_min_seconds": 3600,
                            **kw})


def test_the_rule_reads_a_plateau_within_one_validation_sample():
    rule = PlateauRule()
    assert not rule.applies(12) and rule.applies(48)
    assert rule.every(48) == 4 and rule.cooldown_epochs(48) == 6
    assert [e for e in range(1, 49) if rule.validates(e, 48)] == [16, 20, 24, 28, 32, 36, 40, 44, 48]
    assert not any(rule.validates(e, 12) for e in range(1, 13))
    n = 360  # one sample is 0.0028
    assert rule.plateaued([0.90, 0.95, 0.951, 0.952], n)  # within one sample of the best before them
    assert not rule.plateaued([0.90, 0.95, 0.951, 0.96], n)  # the last beat it by more
    assert not rule.plateaued([0.90, 0.95, 0.96], n) and rule.plateaued([0.95, 0.94, 0.95], n)
    assert not rule.plateaued([0.95, 0.95], n)  # two validations: nothing before them to compare with
    assert rule.cooldown(24, 48) == 30 and rule.cooldown(41, 48) is None  # would end too near the planned end


def test_the_cooldown_anneals_rate_and_beta_from_where_they_are_and_follows_a_rescaled_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100)
    for _ in range(50):
        opt.step()
        sched.step()
    lr0, beta0 = opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]
    c = Cooldown.begin(opt, start=50, end=60, plateau_epoch=5, end_epoch=6)
    c.apply(opt, 50)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0) and opt.param_groups[0]["betas"][0] == pytest.approx(beta0)
    rates = []
    for step in range(51, 61):
        c.apply(opt, step)
        rates.append(opt.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(opt.param_groups[0]["min_lr"]) and opt.param_groups[0]["betas"][0] == 0.95
    assert rates[4] == pytest.approx(lr0 / 2, rel=0.01)  # cosine: half way at the midpoint
    for key in ("lr", "max_lr", "min_lr", "initial_lr"):  # the divergence guard's rollback at x0.3
        opt.param_groups[0][key] *= 0.3
    c.apply(opt, 50)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * lr0)
    assert Cooldown.from_dict(c.to_dict()) == c and Cooldown.from_dict(None) is None


def test_a_flat_run_cools_down_and_ends_early_and_records_why(small, tmp_path, monkeypatch):
    _scripted(monkeypatch, lambda epoch: 0.9)
    teacher, ta = _nets()
    told = []

    class Told:  # stands in for Progress: what the user is told, and the bar's new length
        totals = []

        def add(self, description, total):
            self.totals.append(total)
            return 0

        def advance(self, task, n=1):
            pass

        def update(self, task, **kw):
            if "total" in kw:
                self.totals.append(kw["total"])

        def done(self, kind, key=None, total=None, **info):
            pass

        def log(self, msg):
            told.append(msg)

    progress = Told()
    r = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(), run_dir=tmp_path, progress=progress)
    steps = len(small.x_train) // 64
    assert progress.totals == [12 * steps, 10 * steps]
    assert len(told) == 1 and "cools down over epochs 9-10" in told[0] and "10 of 12 planned" in told[0]
    # validations at 4, 6, 8 (past the peak at 3.6, every 2): flat at 8, then 2 epochs of cooldown
    assert [h["epoch"] for h in r.history] == list(range(1, 11))
    assert [h["epoch"] for h in r.history if h["val_acc"]] == [4, 6, 8, 10]
    assert r.stopped_early == {"plateau_epoch": 8, "epochs_run": 10, "epochs_planned": 12}
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    group = ckpt["optimizer"]["param_groups"][0]
    assert ckpt["cooldown"]["end_epoch"] == 10 and ckpt["epoch"] == 10
    assert group["lr"] == pytest.approx(group["min_lr"])  # annealed to the floor by its end
    assert set(r.models) == {"w100", "w050"}


def test_a_run_that_keeps_improving_runs_every_epoch_step_for_step(small, tmp_path, monkeypatch):
    _scripted(monkeypatch, lambda epoch: 0.5 + 0.04 * epoch)  # more than one sample better each time
    runs = {}
    for stop in (True, False):
        teacher, ta = _nets()
        runs[stop] = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(stop_on_plateau=stop),
                                  run_dir=tmp_path / str(stop))
    assert runs[True].stopped_early is None and len(runs[True].history) == 12
    assert [h["loss"] for h in runs[True].history] == [h["loss"] for h in runs[False].history]
    # the rule's extra validations changed no weight
    assert all(torch.equal(a, b) for a, b in zip(runs[True].models["w050"].state_dict().values(),
                                                  runs[False].models["w050"].state_dict().values()))
    assert [h["epoch"] for h in runs[False].history if h["val_acc"]] == [12]


def test_a_run_killed_in_its_cooldown_resumes_into_the_same_end(small, tmp_path, monkeypatch):
    _scripted(monkeypatch, lambda epoch: 0.9)
    teacher, ta = _nets()
    straight = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(), run_dir=tmp_path / "straight")

    teacher, ta = _nets()
    with pytest.raises(Stop):
        train_family(teacher, ta, small, sizes=SIZES, config=_cfg(), run_dir=tmp_path / "killed",
                     progress=StopAt(9, Stop))
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["cooldown"]["plateau_epoch"] == 8
    teacher, ta = _nets()
    resumed = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(), run_dir=tmp_path / "killed",
                           resume=True)
    assert resumed.stopped_early == straight.stopped_early
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)


def test_short_runs_and_runs_asked_for_every_epoch_are_never_stopped(small, tmp_path, monkeypatch):
    original = _Trainer.evaluate
    monkeypatch.setattr(_Trainer, "evaluate", lambda t: (original(t)[0], {"w100": 0.9, "w050": 0.9}))
    teacher, ta = _nets()  # the default rule: 12 epochs are too few to be read
    r = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(eval_every=2, eval_min_seconds=0),
                     run_dir=tmp_path / "short")
    assert r.stopped_early is None and len(r.history) == 12
    monkeypatch.setattr(T, "PlateauRule", lambda: RULE)
    teacher, ta = _nets()
    r = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(stop_on_plateau=False, eval_every=2,
                                                                  eval_min_seconds=0), run_dir=tmp_path / "off")
    assert r.stopped_early is None and len(r.history) == 12


def test_the_manifest_and_report_tell_an_early_end():
    from compressor.errors import ConfigError
    from compressor.manifest import validate_manifest
    from compressor.report._view import time_rows
    from compressor.manifest import example_manifest

    m = copy.deepcopy(example_manifest())
    m.setdefault("training", {}).update(train_seconds=30.0, epochs=48, epochs_why="cnn family from random weights",
                                        stopped_early={"plateau_epoch": 24, "epochs_run": 30, "epochs_planned": 48},
                                        history=[{"epoch": e, "loss": 1.0} for e in range(1, 31)])
    m["stages"] = {**(m.get("stages") or {}), "distill": 31.0}
    validate_manifest(m)
    distill = next(row for row in time_rows(m) if row[0] == "distill")[3]
    assert distill.startswith("30 epochs") and "of 48 planned: validation accuracy flat from epoch 24" in distill
    assert math.isclose(float(distill.split(", ")[-1].split(" s")[0]), 1.0)
    m["training"]["stopped_early"] = {"plateau_epoch": 24}
    with pytest.raises(ConfigError, match=r"training.stopped_early: missing required key 'epochs_run'"):
        validate_manifest(m)


def test_validations_the_clock_adds_do_not_move_the_decision(small, tmp_path, monkeypatch):
    """A long run also validates every `eval_every` epochs once `eval_min_seconds` passed: those
    follow the machine's speed, so the rule reads only its own (here epoch 7 looks better, and
    counted it would have kept the run going)."""
    _scripted(monkeypatch, lambda epoch: 0.95 if epoch == 7 else 0.9)
    runs = {}
    for wait in (0.0, 3600.0):
        teacher, ta = _nets()
        runs[wait] = train_family(teacher, ta, small, sizes=SIZES,
                                  config=_cfg(eval_every=1, eval_min_seconds=wait), run_dir=tmp_path / str(wait))
    assert [h["epoch"] for h in runs[0.0].history if h["val_acc"]] == list(range(1, 11))
    assert runs[0.0].stopped_early == runs[3600.0].stopped_early == {"plateau_epoch": 8, "epochs_run": 10,
                                                                      "epochs_planned": 12}
    assert [h["loss"] for h in runs[0.0].history] == [h["loss"] for h in runs[3600.0].history]


def test_the_setting_can_change_on_resume_and_a_begun_cooldown_goes_on(small, tmp_path, monkeypatch):
    _scripted(monkeypatch, lambda epoch: 0.9)

    # written with the rule off (as before it existed), resumed with it on before its first validation:
    # no refusal, and it acts
    teacher, ta = _nets()
    with pytest.raises(Stop):
        train_family(teacher, ta, small, sizes=SIZES, config=_cfg(stop_on_plateau=False), run_dir=tmp_path / "a",
                     progress=StopAt(3, Stop))
    teacher, ta = _nets()
    r = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(), run_dir=tmp_path / "a", resume=True)
    assert r.stopped_early == {"plateau_epoch": 8, "epochs_run": 10, "epochs_planned": 12}
    # a cooldown begun goes on to its end when the run is resumed with the rule off
    teacher, ta = _nets()
    with pytest.raises(Stop):
        train_family(teacher, ta, small, sizes=SIZES, config=_cfg(), run_dir=tmp_path / "b", progress=StopAt(9, Stop))
    teacher, ta = _nets()
    r = train_family(teacher, ta, small, sizes=SIZES, config=_cfg(stop_on_plateau=False), run_dir=tmp_path / "b",
                     resume=True)
    assert r.stopped_early is not None and len(r.history) == 10
