import pytest
import torch

from compressor import prune as P
from compressor.errors import TeacherLoadError
from compressor.intake.teacher import load_teacher


@pytest.mark.parametrize("fmt", ["torchscript", "export", "state_dict", "pickle"])
def test_every_format_loads_lifts_and_matches(fmt, tiny_teacher_files, digits8):
    kw = {"arch": "tiny_models:make_tiny"} if fmt == "state_dict" else {}
    kw.update({"trust_pickle": True} if fmt == "pickle" else {})
    t = load_teacher(tiny_teacher_files[fmt], digits8.x_val[:8], 10, **kw)
    assert t.format == fmt and t.prunable and t.spec.shape == (1, 8, 8)
    ref = tiny_teacher_files["model"]
    x = digits8.x_val[:33]  # a batch size never seen at export time
    with torch.no_grad():
        assert torch.allclose(t.module(x), ref(x), atol=1e-5)
    # lifted graphs expose real layers: Torch-Pruning finds the coupled groups
    groups = P.channel_groups(t.module, x[:2])
    assert {g.size for g in groups} == {16, 8}


def test_pickle_needs_trust(tiny_teacher_files, digits8):
    with pytest.raises(TeacherLoadError, match="--trust-pickle"):
        load_teacher(tiny_teacher_files["pickle"], digits8.x_val[:8], 10)


def test_state_dict_needs_arch_and_matching_arch(tiny_teacher_files, digits8):
    with pytest.raises(TeacherLoadError, match="--arch"):
        load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], 10)
    with pytest.raises(TeacherLoadError, match="does not fit"):
        load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], 10, arch="tiny_models:make_wrong")
    with pytest.raises(TeacherLoadError, match="cannot import"):
        load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], 10, arch="no_such_mod:f")


def test_missing_corrupt_unknown(tmp_path, digits8):
    with pytest.raises(TeacherLoadError, match="does not exist"):
        load_teacher(tmp_path / "nope.pt", digits8.x_val[:8], 10)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(TeacherLoadError, match="not a TorchScript"):
        load_teacher(junk, digits8.x_val[:8], 10)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x02garbage")
    with pytest.raises(TeacherLoadError, match="corrupt"):
        load_teacher(broken, digits8.x_val[:8], 10)


def test_truncated_torchscript(tiny_teacher_files, tmp_path, digits8):
    data = tiny_teacher_files["torchscript"].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherLoadError):
        load_teacher(cut, digits8.x_val[:8], 10)


def test_shape_mismatch_names_both_shapes(tiny_teacher_files, digits8):
    wrong = torch.randn(8, 3, 8, 8)
    with pytest.raises(TeacherLoadError, match=r"\(3, 8, 8\)"):
        load_teacher(tiny_teacher_files["torchscript"], wrong, 10)
    with pytest.raises(TeacherLoadError, match=r"expected \(batch, 7\)"):
        load_teacher(tiny_teacher_files["torchscript"], digits8.x_val[:8], 7)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state_dict"])
def test_training_checkpoints_are_unwrapped(tiny_teacher_files, digits8, tmp_path, wrap):
    """A checkpoint dict (weights beside optimizer state and an epoch) with DDP's `module.` prefix."""
    state = torch.load(tiny_teacher_files["state_dict"], weights_only=True)
    ckpt = {wrap: {f"module.{k}": v for k, v in state.items()}, "epoch": 7,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    teacher = load_teacher(path, digits8.x_val[:8], 10, arch="tiny_models:make_tiny")
    reference = load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], 10, arch="tiny_models:make_tiny")
    x = digits8.x_val[:16]
    assert torch.equal(teacher.module(x), reference.module(x)) and teacher.format == "state_dict"


def test_arch_kwargs_reach_the_factory(tiny_teacher_files, digits8, tmp_path, capsys):
    """`--arch pkg.mod:Class --arch-kwargs '{...}'`: the factory is built with the given keywords."""
    teacher = load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], 10, arch="tiny_models:TinyResidual",
                           arch_kwargs={"classes": 10, "in_ch": 1})
    assert teacher.format == "state_dict"
    with pytest.raises(TeacherLoadError, match="arch-kwargs.*TypeError"):
        load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], 10, arch="tiny_models:TinyResidual",
                     arch_kwargs={"no_such_keyword": 1})
    from compressor.cli import main

    code = main(["--teacher", str(tiny_teacher_files["state_dict"]), "--arch", "tiny_models:TinyResidual",
                 "--arch-kwargs", "{not json", "--budget", "1ms", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("compress: error:") and "arch_kwargs must be a JSON object" in err
