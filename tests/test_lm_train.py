"""The nested LM recipes: which size trains on which step, who teaches it, and what it costs.

A tiny GPT-2 (3 layers, d 32) as teacher and family; a counting wrapper records every
teacher forward and the batch it saw."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from compressor.lm.gpt import Shape, nested_forward  # noqa: E402
from compressor.lm.hf import transformers  # noqa: E402
from compressor.lm.train import LMDistillConfig, TAIDState, name, token_kl, train_nested_lm  # noqa: E402

SIZES = [Shape(3, 4, 128), Shape(2, 2, 64), Shape(2, 2, 32), Shape(1, 1, 16)]


def _gpt(seed: int = 0):
    tf = transformers()
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=3, n_head=4,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()


class CountingTeacher(torch.nn.Module):
    """Logits of a real GPT-2, counting its calls (no `config`: called as a plain module)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _gpt(seed=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x).logits


def _train(recipe: str, steps: int, sizes=SIZES, **kw):
    teacher, family = CountingTeacher(), _gpt()
    before = copy.deepcopy(family.state_dict())
    ids = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(0))
    run = train_nested_lm(teacher, family, sizes, ids,
                          LMDistillConfig(steps=steps, batch_size=2, context=8, recipe=recipe, **kw))
    return run, teacher, family, before


def test_chain_trains_each_size_equally_and_runs_the_teacher_only_for_the_ta():
    run, teacher, _, _ = _train("chain", 8, student_rounds=1)
    ta, students = SIZES[0], SIZES[1:]
    assert run.trained == {name(s): 2 for s in SIZES}  # 8 steps over 4 sizes, a fresh order every 4 steps
    assert teacher.calls == run.targets["teacher"] == 2  # the TA's steps only
    assert run.targets[name(ta)] == 6  # each student's step: the TA's logits as its target
    assert run.forwards_per_step()[name(ta) + ":target"] == pytest.approx(6 / 8)
    assert all(len(h) == 2 for h in run.history)  # one size per logged step: {"step", that size's CE}
    assert all(name(s) in run.trained for s in students)


def test_students_get_their_rounds_per_step_of_the_ta():
    run, teacher, _, _ = _train("chain", 14)  # default: two rounds of students per TA step, cycles of 7
    assert run.trained == {name(SIZES[0]): 2, **{name(s): 4 for s in SIZES[1:]}}
    assert teacher.calls == 2 and run.targets[name(SIZES[0])] == 12


def test_sampled_teaches_every_size_from_the_teacher_and_never_runs_the_ta_as_target():
    run, teacher, _, _ = _train("sampled", 8, student_rounds=1)
    assert run.trained == {name(s): 2 for s in SIZES}
    assert teacher.calls == 8 and name(SIZES[0]) not in run.targets


def test_all_trains_every_size_every_step():
    run, teacher, _, _ = _train("all", 3)
    assert run.trained == {name(s): 3 for s in SIZES}
    assert teacher.calls == 3 and name(SIZES[0]) not in run.targets  # the TA's own forward is the students' target


def test_a_chain_step_of_a_student_follows_the_ta_not_the_teacher():
    """With CE off, a student's step moves it towards the TA: its KL to the TA falls, and the
    teacher (never called on that step) has no say."""
    sizes = [SIZES[0], SIZES[3]]
    teacher, family = CountingTeacher(), _gpt()
    with torch.no_grad():  # the TA's own layers (the student keeps one) made loud: the two disagree
        for blk in family.transformer.h[1:]:
            blk.mlp.c_proj.weight.mul_(50)
    ids = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(0))
    x = ids[:64].reshape(8, 8)
    with torch.no_grad():
        gap = float(token_kl(nested_forward(family, x, sizes[1]), nested_forward(family, x, sizes[0])))
    steps, trained = 0, None
    # order of sizes is seeded; run until the student has had one step more than the TA
    cfg = dict(batch_size=8, context=8, recipe="chain", w_ce=0.0, lr=1e-2, warmup=1)
    for seed in range(20):
        fam = copy.deepcopy(family)
        teacher.calls = 0
        trained = train_nested_lm(teacher, fam, sizes, ids, LMDistillConfig(steps=1, seed=seed, **cfg))
        if trained.trained == {name(sizes[1]): 1}:
            steps = 1
            break
    assert steps == 1 and teacher.calls == 0
    with torch.no_grad():
        after = float(token_kl(nested_forward(fam, x, sizes[1]), nested_forward(family, x, sizes[0])))
    assert after < 0.7 * gap  # (with w_ta = 0 too, the gap stays within 0.1 % of where it was)


def test_one_size_alone_is_plain_distillation_in_every_recipe():
    for recipe in ("chain", "sampled", "all"):
        run, teacher, family, before = _train(recipe, 3, sizes=[SIZES[2]])
        assert run.trained == {name(SIZES[2]): 3} and teacher.calls == 3
        # weights outside the size stay as they were (its prefix only is trained); inside, they move
        assert torch.equal(family.transformer.h[2].mlp.c_fc.weight, before["transformer.h.2.mlp.c_fc.weight"])
        assert not torch.equal(family.transformer.h[0].mlp.c_fc.weight[:, :32],
                               before["transformer.h.0.mlp.c_fc.weight"][:, :32])


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="recipe must be one of chain, sampled, all"):
        LMDistillConfig(recipe="every")
    with pytest.raises(ValueError, match="student_rounds must be at least 1"):
        LMDistillConfig(student_rounds=0)
    with pytest.raises(ValueError, match="taid_start must be in"):
        LMDistillConfig(taid=True, taid_start=1.5)


def test_taid_target_starts_near_the_size_and_ends_at_its_teacher():
    g = torch.Generator().manual_seed(0)
    own, target = torch.randn(2, 8, 64, generator=g), 3 * torch.randn(2, 8, 64, generator=g)
    state = TAIDState(t=0.4)
    assert float(token_kl(own, state.target(own, target))) < 0.5 * float(token_kl(own, target))
    assert torch.equal(TAIDState(t=1.0).target(own, target), target)
    assert torch.equal(TAIDState(t=0.0).target(own, target), own)


def test_taid_t_rises_faster_while_the_loss_falls_and_never_below_the_line_to_one():
    cfg = LMDistillConfig(taid=True, taid_alpha=0.05)
    falling, rising = TAIDState(t=0.4), TAIDState(t=0.4)
    for i in range(10):
        falling.update(1.0 / (i + 1), i / 100, cfg)
        rising.update(1.0 + i, i / 100, cfg)
    assert falling.t > rising.t > 0.4  # both rise; a falling loss (positive momentum) faster
    ts = []
    for i in range(101):
        rising.update(5.0, i / 100, cfg)
        ts.append(rising.t)
    assert ts == sorted(ts) and ts[-1] == 1.0
    assert all(t >= 0.4 + 0.6 * i / 100 - 1e-12 for i, t in enumerate(ts))


def test_a_taid_run_takes_every_size_to_the_plain_target_by_its_last_step():
    run, _, family, before = _train("all", 6, taid=True)
    last = run.history[-1]
    assert all(last[f"{name(s)}:taid_t"] == 1.0 for s in SIZES)
    assert 0.4 <= run.history[0][f"{name(SIZES[0])}:taid_t"] < 1.0
    plain, _, family_plain, _ = _train("all", 6)
    assert not torch.equal(family.transformer.h[0].mlp.c_fc.weight, family_plain.transformer.h[0].mlp.c_fc.weight)



def test_too_few_steps_for_every_size_is_said(caplog):
    with caplog.at_level("WARNING", logger="compressor.lm.train"):
        run, _, _, _ = _train("chain", 2)
    missed = [name(s) for s in SIZES if name(s) not in run.trained]
    assert len(missed) >= 2 and all(m in caplog.text for m in missed) and "give more steps" in caplog.text
