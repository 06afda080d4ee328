"""The family's default epochs: 12 when cut from the teacher, more when it starts from random weights."""
from compressor.distill.epochs import DEFAULT_EPOCHS, SCRATCH_FACTOR, default_epochs, from_scratch

CUT = {"space": "teacher_scaled", "ratios": {"stem_0": 0.5}}
CNN = {"space": "cnn", "family": "cnn", "widths": [16, 32]}


def test_requested_epochs_are_kept_for_any_family():
    assert default_epochs(3, CNN, 1e7, 1e5) == (3, "as requested")
    assert default_epochs(30, CUT, 1e7, 1e7)[0] == 30


def test_a_family_cut_from_the_teacher_trains_the_default_epochs():
    assert not from_scratch(CUT)
    epochs, why = default_epochs(None, CUT, 1e7, 1e5)
    assert epochs == DEFAULT_EPOCHS and "teacher" in why


def test_a_small_family_from_scratch_trains_longer_up_to_the_cap():
    assert from_scratch(CNN) and from_scratch({"space": "mobile"})
    # a TA at a tenth of the teacher's MACs: 12 x 10 would be 120, capped at 4x
    epochs, why = default_epochs(None, CNN, 1e7, 1e6)
    assert epochs == SCRATCH_FACTOR * DEFAULT_EPOCHS == 48
    assert "random weights" in why and "0.10x" in why


def test_a_family_from_scratch_keeps_the_compute_of_a_teacher_sized_one():
    assert default_epochs(None, CNN, 1e7, 5e6)[0] == 24  # half the teacher's MACs: twice the epochs
    assert default_epochs(None, CNN, 1e7, 2e7)[0] == DEFAULT_EPOCHS  # never fewer than the default
    assert default_epochs(None, CNN, 0, 0)[0] == 48  # MACs unknown: the cap
