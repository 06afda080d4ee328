"""The family's default epochs: 12 when cut from the teacher, 4x that from random weights (which ends
early once caught up with the teacher or flat: test_distill_plateau.py)."""
from compressor.distill.epochs import DEFAULT_EPOCHS, SCRATCH_EPOCHS, default_epochs, from_scratch
from compressor.distill.plateau import PlateauRule

CUT = {"space": "teacher_scaled", "ratios": {"stem_0": 0.5}}
CNN = {"space": "cnn", "family": "cnn", "widths": [16, 32]}


def test_requested_epochs_are_kept_for_any_family():
    assert default_epochs(3, CNN) == (3, "as requested")
    assert default_epochs(30, CUT)[0] == 30


def test_a_family_cut_from_the_teacher_trains_the_default_epochs():
    assert not from_scratch(CUT)
    epochs, why = default_epochs(None, CUT)
    assert epochs == DEFAULT_EPOCHS == 12 and "teacher" in why
    assert not PlateauRule().applies(epochs)  # never cut short


def test_a_family_from_random_weights_trains_four_times_longer():
    assert from_scratch(CNN) and from_scratch({"space": "transformer", "family": "transformer"})
    epochs, why = default_epochs(None, CNN)
    assert epochs == SCRATCH_EPOCHS == 48 and "cnn family from random weights" == why
    assert PlateauRule().applies(epochs)  # planned long, it may end once caught up or flat


def test_a_cut_family_behind_its_teacher_is_told_of_more_epochs():
    from compressor.pipeline import behind_teacher_hint

    behind = {"w100": 0.975, "w050": 0.970}  # 360 images: 3-4 images behind a 98.6 % teacher
    hint = behind_teacher_hint(behind, 0.986, 360, 12, None, CUT)
    assert hint is not None and "1.4 points behind the teacher" in hint and "--epochs 24" in hint
    assert behind_teacher_hint({"w100": 0.985, "w050": 0.986}, 0.986, 360, 12, None, CUT) is None  # caught up
    assert behind_teacher_hint(behind, 0.986, 360, 12, 12, CUT) is None  # the user chose the epochs
    assert behind_teacher_hint(behind, 0.986, 360, 48, None, CNN) is None  # from random weights: its own rules
    assert behind_teacher_hint(behind, None, 360, 12, None, CUT) is None
