"""The one-run nested training loop: results, compute count, checkpoints, resume after kill -9."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from compressor import prune as P
from compressor.distill import DistillConfig, NestedFamily, recalibrate_bn, train_family
from compressor.distill.train import CHECKPOINT, FAMILY_WEIGHTS
from compressor.errors import ConfigError
from compressor.families import build_family
from compressor.intake.lift import lift_exported
from tiny_models import TinyResidual, randomise_bn

ROOT = Path(__file__).resolve().parents[1]
SIZES = [("w100", 1.0), ("w050", 0.5), ("w025", 0.25)]
TA_ARCH = {"family": "cnn", "widths": [16, 32], "depths": [1, 1]}
TEACHER_ARCH = {"family": "cnn", "widths": [16, 32], "depths": [1, 2]}


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    return build_family(TEACHER_ARCH, (1, 8, 8), 10).eval(), build_family(TA_ARCH, (1, 8, 8), 10)


class CountingProgress:
    """Stands in for compressor.progress.Progress; counts the training steps it is told about."""

    def __init__(self):
        self.steps = 0
        self.descriptions = []
        self.units = []

    def done(self, kind, key=None, total=None, **info):
        self.units.append((kind, key))

    def add(self, description, total):
        return 0

    def advance(self, task, n=1):
        if n == 1:
            self.steps += 1

    def update(self, task, **kw):
        self.descriptions.append(kw.get("description", ""))

    def log(self, msg):
        pass


@pytest.fixture(scope="module")
def small(digits8):
    return type(digits8)(digits8.name, digits8.x_train[:384], digits8.y_train[:384], digits8.x_val,
                         digits8.y_val, digits8.num_classes)


def test_one_run_trains_every_size_and_counts_compute(small, tmp_path):
    teacher, ta = _nets()
    before = {k: v.clone() for k, v in ta.state_dict().items()}
    cfg = DistillConfig(epochs=2, batch_size=64, bn_calib_samples=128, augment="shift", shift=1,
                        extra_losses=(("fitnets", 0.5), ("rkd", 0.5)))
    progress = CountingProgress()
    r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path, progress=progress,
                     arch=TA_ARCH)
    steps = 2 * (384 // 64)
    assert progress.steps == steps and any("w025" in d for d in progress.descriptions)
    assert progress.units == [("epoch", 1), ("epoch", 2)]
    assert [h["epoch"] for h in r.history] == [1, 2] and set(r.history[-1]["val_acc"]) == {"w100", "w050", "w025"}
    assert all(h["seconds"] > 0 for h in r.history) and sum(h["seconds"] for h in r.history) <= r.train_seconds + 1e-3
    assert set(r.models) == set(r.val_acc) == {"w100", "w050", "w025"} and all(0 <= a <= 1 for a in r.val_acc.values())
    assert P.count_params(r.models["w025"]) < P.count_params(r.models["w050"]) < P.count_params(r.models["w100"])
    assert any(not torch.equal(before[k], v) for k, v in ta.state_dict().items())  # the TA itself trained
    # executed compute: teacher forward + 3 × (TA + both students) per sample, every step
    x1 = small.x_train[:1]
    per_sample = P.count_macs(teacher, x1) + 3 * (r.macs["w100"] + r.macs["w050"] + r.macs["w025"])
    assert r.train_flops == steps * 64 * per_sample
    assert r.family.sizes == dict(SIZES) and r.family.arch == TA_ARCH and r.train_seconds > 0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in teacher.modules())  # taps removed


def test_validates_every_eval_every_epochs_and_after_the_last(small, tmp_path):
    teacher, ta = _nets()
    cfg = DistillConfig(epochs=4, batch_size=128, bn_calib_samples=64, eval_every=3, eval_min_seconds=0)
    progress = CountingProgress()
    r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path, progress=progress)
    assert [h["val_acc"] is not None for h in r.history] == [False, False, True, True]
    assert progress.units == [("epoch", e) for e in (1, 2, 3, 4)]  # every epoch is checkpointed and journalled
    assert r.val_acc == r.history[-1]["val_acc"]  # the kept sizes are the last epoch's
    with pytest.raises(ConfigError, match="eval_every"):
        DistillConfig(eval_every=0)
    with pytest.raises(ConfigError, match="eval_min_seconds"):
        DistillConfig(eval_min_seconds=-1)


def test_a_short_run_validates_at_its_end_only_and_learns_the_same(small, tmp_path):
    """The validation halfway waits for `eval_min_seconds` of training; skipping it changes nothing
    the run learns (same weights, same final accuracies)."""
    runs = {}
    for wait in (0.0, 3600.0):
        teacher, ta = _nets()
        cfg = DistillConfig(epochs=4, batch_size=128, bn_calib_samples=64, eval_every=2, eval_min_seconds=wait)
        runs[wait] = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path / str(wait))
    assert [h["val_acc"] is not None for h in runs[0.0].history] == [False, True, False, True]
    assert [h["val_acc"] is not None for h in runs[3600.0].history] == [False, False, False, True]
    assert runs[0.0].val_acc == runs[3600.0].val_acc
    assert [h["loss"] for h in runs[0.0].history] == [h["loss"] for h in runs[3600.0].history]


def test_family_weights_restore_the_extracted_sizes(small, tmp_path):
    teacher, ta = _nets()
    cfg = DistillConfig(epochs=1, bn_calib_samples=128)
    r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path)
    saved = torch.load(tmp_path / FAMILY_WEIGHTS, weights_only=True)  # tensors and plain data only
    _, fresh = _nets(seed=1)
    fresh.load_state_dict(saved["ta"])
    fam = NestedFamily(fresh, small.x_train[:2], [tuple(s) for s in saved["sizes"]], order=saved["channel_order"],
                       round_to=saved["round_to"])
    calib = small.x_train[torch.randperm(384, generator=torch.Generator().manual_seed(cfg.seed + 1))[:128]]
    x = small.x_val[:32]
    for name, ratio in SIZES:  # the masked family, recalibrated at that width, equals the extracted size
        fam.set_width(ratio)
        recalibrate_bn(fam.module, calib)
        with torch.no_grad():
            assert (fam.module.eval()(x) - r.models[name](x)).abs().max() <= 1e-5
        fam.module.load_state_dict(saved["ta"])
    assert r.family.weights_path == str(tmp_path / FAMILY_WEIGHTS)


def test_sandwich_trains_the_smallest_plus_random_others(small, tmp_path):
    teacher, ta = _nets()
    sizes = [("w100", 1.0), ("w075", 0.75), ("w050", 0.5), ("w025", 0.25)]
    cfg = DistillConfig(epochs=1, n_random_widths=0, bn_calib_samples=64, beta=0.0, ta_kd=0.0)
    r = train_family(teacher, ta, small, sizes=sizes, config=cfg, run_dir=tmp_path)
    # no teacher terms: the teacher never runs; only the TA and the smallest student train
    assert r.train_flops == (384 // 64) * 64 * 3 * (r.macs["w100"] + r.macs["w025"])


def test_scripted_teacher_and_lifted_ta(small, tmp_path):
    """A TorchScript teacher (opaque: logits only) distils into a teacher-derived lifted-graph TA."""
    teacher, _ = _nets()
    scripted = torch.jit.trace(teacher, small.x_train[:2])
    torch.manual_seed(0)
    ta = lift_exported(torch.export.export(randomise_bn(TinyResidual()).eval(), (small.x_train[:4],)).module())[0]
    with pytest.raises(ConfigError, match="needs feature maps, but the teacher exposes none"):
        train_family(scripted, ta, small, sizes=SIZES, run_dir=tmp_path / "fit",
                     config=DistillConfig(epochs=1, extra_losses=(("fitnets", 1.0),)))
    r = train_family(scripted, ta, small, sizes=SIZES, run_dir=tmp_path / "kd",
                     config=DistillConfig(epochs=1, bn_calib_samples=64, extra_losses=(("sp", 1.0),)))
    assert set(r.models) == {"w100", "w050", "w025"}
    assert r.train_flops == (384 // 64) * 64 * 3 * sum(r.macs.values())  # the opaque teacher is not counted
    fam = NestedFamily(ta, small.x_train[:2], SIZES, order=r.family.channel_order)
    for name, ratio in SIZES:
        dense = fam.extract(name, small.x_train[:64])
        fam.set_width(ratio)
        recalibrate_bn(ta, small.x_train[:64])
        with torch.no_grad():
            assert (ta.eval()(small.x_val) - dense(small.x_val)).abs().max() <= 1e-5


def test_resume_refuses_a_different_run(small, tmp_path):
    teacher, ta = _nets()
    train_family(teacher, ta, small, sizes=SIZES, config=DistillConfig(epochs=1, bn_calib_samples=64),
                 run_dir=tmp_path)
    teacher, ta = _nets()
    with pytest.raises(ConfigError, match="changed"):
        train_family(teacher, ta, small, sizes=SIZES, config=DistillConfig(epochs=1, alpha=0.25, bn_calib_samples=64),
                     run_dir=tmp_path, resume=True)


def test_config_is_checked_when_built():
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        DistillConfig(epochs=0)
    with pytest.raises(ConfigError, match="did you mean"):
        DistillConfig(extra_losses=(("fitnet", 1.0),))


_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    torch.set_num_threads(1)
    from compressor.intake.data import load_data
    from compressor.distill import DistillConfig, train_family
    from test_distill_train import SIZES, _nets, CountingProgress

    class SlowAfterCheckpoint(CountingProgress):
        def done(self, kind, key=None, total=None, **info):  # called right after each epoch's checkpoint
            super().done(kind, key, total, **info)
            if kind == "epoch":
                time.sleep(30)

    d = load_data("digits", seed=0, image_size=8)
    small = type(d)(d.name, d.x_train[:384], d.y_train[:384], d.x_val, d.y_val, d.num_classes)
    teacher, ta = _nets()
    train_family(teacher, ta, small, sizes=SIZES, config=DistillConfig(epochs=3, bn_calib_samples=64),
                 run_dir={run!r}, progress=SlowAfterCheckpoint())
""")


def test_resume_after_kill_continues_without_repeating_epochs(small, tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), run=str(run)))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / CHECKPOINT).exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    done = ckpt["epoch"]
    assert 1 <= done < 3 and not (run / FAMILY_WEIGHTS).exists()

    teacher, ta = _nets()
    progress = CountingProgress()
    r = train_family(teacher, ta, small, sizes=SIZES, config=DistillConfig(epochs=3, bn_calib_samples=64),
                     run_dir=run, resume=True, progress=progress)
    assert progress.steps == (3 - done) * (384 // 64)  # finished epochs are not trained again
    assert progress.units == [("epoch", e) for e in range(done + 1, 4)]  # and not reported done again
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.history[:done] == ckpt["history"]

    # and the interrupted run ends where an uninterrupted one does (RNG and optimiser state restored)
    teacher, ta = _nets()
    straight = train_family(teacher, ta, small, sizes=SIZES, config=DistillConfig(epochs=3, bn_calib_samples=64),
                            run_dir=tmp_path / "straight")
    assert [h["loss"] for h in straight.history] == pytest.approx([h["loss"] for h in r.history], rel=1e-5)


def test_without_augmentation_the_teacher_runs_once_per_sample_and_trains_the_same(small, tmp_path, monkeypatch):
    """No augmentation: the teacher's logits are computed once per run and looked up each step; the
    run's losses are the ones a teacher called every step gives, and its compute count says so."""
    from compressor.distill.train import _Trainer

    cfg = DistillConfig(epochs=2, batch_size=64, bn_calib_samples=128)  # augment "none"
    runs = {}
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(_Trainer, "_cache_teacher", lambda self: None)
        teacher, ta = _nets()
        seen: list[int] = []
        hook = teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
        runs[cached] = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path / str(cached))
        hook.remove()
        runs[cached].teacher_samples = sum(seen)
    steps = 2 * (384 // 64)
    probe = 1  # counting the teacher's MACs runs it on one sample
    assert runs[True].teacher_samples == 384 + probe and runs[False].teacher_samples == steps * 64 + probe
    for a, b in zip(runs[True].history, runs[False].history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    teacher_macs = P.count_macs(_nets()[0], small.x_train[:1])
    assert runs[False].train_flops - runs[True].train_flops == (steps * 64 - 384) * teacher_macs


def test_chain_trains_one_granularity_per_step_and_runs_the_teacher_for_the_ta_only(small, tmp_path):
    """The chain schedule: cycles of the TA once and each student twice; the teacher runs on the
    TA's steps, a student's step runs the TA forward (no gradient) as its teacher."""
    from compressor.distill.train import _Trainer

    teacher, ta = _nets()
    seen: list[int] = []
    hook = teacher.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    turns: list = []
    real = _Trainer._chain_turn

    def record(self, step):
        turns.append(real(self, step))
        return turns[-1]

    cfg = DistillConfig(epochs=2, batch_size=64, bn_calib_samples=128, augment="shift", shift=1, schedule="chain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Trainer, "_chain_turn", record)
        r = train_family(teacher, ta, small, sizes=SIZES, config=cfg, run_dir=tmp_path)
    hook.remove()
    steps = 2 * (384 // 64)  # 12 steps: cycles of 5 (TA, w050 twice, w025 twice), each in its own order
    assert len(turns) == steps
    for k in range(0, steps - 4, 5):
        assert sorted(turns[k:k + 5], key=str) == sorted([None, "w050", "w050", "w025", "w025"], key=str)
    ta_steps = turns.count(None)
    probe = 1  # counting the teacher's MACs runs it on one sample
    assert sum(seen) == ta_steps * 64 + probe  # the teacher: on the TA's steps only
    per = {None: P.count_macs(teacher, small.x_train[:1]) + 3 * r.macs["w100"],
           "w050": r.macs["w100"] + 3 * r.macs["w050"], "w025": r.macs["w100"] + 3 * r.macs["w025"]}
    assert r.train_flops == 64 * sum(per[t] for t in turns)
    assert set(r.models) == {"w100", "w050", "w025"}


def test_chain_turns_are_a_function_of_the_step_and_seed():
    """A resumed run takes the same turns: they follow from the step index and the seed alone."""
    from compressor.distill.train import _Trainer

    class Stub:
        students = ["w050", "w025"]
        cfg = DistillConfig(schedule="chain", seed=3)

    a = [_Trainer._chain_turn(Stub(), s) for s in range(40)]
    assert a == [_Trainer._chain_turn(Stub(), s) for s in range(40)]
    Stub.cfg = DistillConfig(schedule="chain", seed=4)
    assert a != [_Trainer._chain_turn(Stub(), s) for s in range(40)]
    assert a.count(None) == 8 and a.count("w050") == a.count("w025") == 16


def test_chain_schedule_is_checked():
    with pytest.raises(ConfigError, match="schedule must be one of sandwich, chain"):
        DistillConfig(schedule="ladder")
    with pytest.raises(ConfigError, match="student_rounds"):
        DistillConfig(schedule="chain", student_rounds=0)
    with pytest.raises(ConfigError, match="use the sandwich schedule"):
        DistillConfig(schedule="chain", extra_losses=(("fitnets", 0.5),))
