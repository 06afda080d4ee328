"""Teachers named by their model zoo: `--teacher timm:NAME --weights ckpt.pth` (and torchvision:)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from compressor.cli import main
from compressor.errors import TeacherLoadError
from compressor.files import sha256_file
from compressor.intake import load_teacher
from compressor.intake.zoo import build_zoo_model, is_zoo_name, parse_zoo_name
from compressor.manifest import read_manifest

# find_spec, not importorskip: a bare `import timm` is what the shim in compressor.intake.zoo exists to avoid
pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="the models extra (timm, torchvision) is not installed")

FAST = ["--image-size", "8", "--epochs", "1", "--calibration-models", "6", "--no-progress"]
TIMM_MODEL = "timm:test_resnet"  # timm's own 0.4M-parameter test network: a real ResNet, quick to run


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory, digits8):
    """A timm ResNet saved the way training scripts save it: under `state_dict`, with DDP's
    `module.` prefixes and the optimizer's bookkeeping beside it."""
    torch.manual_seed(0)
    model = build_zoo_model(TIMM_MODEL, num_classes=digits8.num_classes, in_channels=1).eval()
    path = tmp_path_factory.mktemp("zoo") / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    return path, model


def test_zoo_names_are_told_apart_from_paths():
    assert is_zoo_name("timm:resnet18") and is_zoo_name("torchvision:mobilenet_v3_small")
    assert not is_zoo_name("teacher.pt") and not is_zoo_name("runs/timm/teacher.pt")
    assert parse_zoo_name("timm:vit_tiny_patch16_224.augreg_in21k") == ("timm", "vit_tiny_patch16_224.augreg_in21k")
    with pytest.raises(TeacherLoadError, match="looks like timm:resnet18"):
        parse_zoo_name("timm:")


def test_timm_teacher_loads_its_checkpoint_and_is_lifted(timm_checkpoint, digits8):
    path, model = timm_checkpoint
    teacher = load_teacher(TIMM_MODEL, digits8.x_val[:8], digits8.num_classes, weights=path)
    assert teacher.format == "timm" and teacher.source == TIMM_MODEL
    assert teacher.sha256 == sha256_file(path)  # the weights are what a resumed run must find unchanged
    assert teacher.prunable, "a timm ResNet is lifted into real layers Torch-Pruning can cut"
    with torch.no_grad():
        torch.testing.assert_close(teacher.module(digits8.x_val[:16]), model(digits8.x_val[:16]),
                                   atol=1e-4, rtol=1e-4)


def test_torchvision_teacher_builds_for_the_data_classes(tmp_path):
    torch.manual_seed(0)
    model = build_zoo_model("torchvision:mobilenet_v3_small", num_classes=4, in_channels=3).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(8, 3, 32, 32)
    teacher = load_teacher("torchvision:mobilenet_v3_small", x, 4, weights=path)
    assert teacher.format == "torchvision"
    with torch.no_grad():
        torch.testing.assert_close(teacher.module(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("teacher, weights, message", [
    (TIMM_MODEL, None, "needs --weights"),
    ("timm:resnet188", "ckpt", r"timm has no model 'resnet188' \(did you mean resnet18"),
    ("torchvision:mobilenet_v3_smal", "ckpt", "did you mean mobilenet_v3_small"),
    (TIMM_MODEL, "missing.pth", "--weights .*missing.pth does not exist"),
])
def test_zoo_mistakes_are_one_clear_error(teacher, weights, message, timm_checkpoint, digits8, tmp_path):
    if weights == "ckpt":
        weights = timm_checkpoint[0]
    elif weights:
        weights = tmp_path / weights
    with pytest.raises(TeacherLoadError, match=message):
        load_teacher(teacher, digits8.x_val[:8], digits8.num_classes, weights=weights)


def test_weights_for_another_size_do_not_fit(tmp_path, digits8):
    other = build_zoo_model(TIMM_MODEL, num_classes=5, in_channels=1)
    torch.save(other.state_dict(), tmp_path / "five.pth")
    with pytest.raises(TeacherLoadError, match="do not fit timm:test_resnet.*built for the data's classes"):
        load_teacher(TIMM_MODEL, digits8.x_val[:8], digits8.num_classes, weights=tmp_path / "five.pth")


def test_weights_without_a_zoo_teacher_is_refused(tiny_teacher_files, digits8):
    with pytest.raises(TeacherLoadError, match="--weights goes with a zoo teacher"):
        load_teacher(tiny_teacher_files["state_dict"], digits8.x_val[:8], digits8.num_classes,
                     arch="tiny_models:make_tiny", weights=tiny_teacher_files["state_dict"])


def test_a_zoo_that_is_not_installed_names_the_extra(monkeypatch, timm_checkpoint, digits8):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` sees without the package
    with pytest.raises(TeacherLoadError, match=r"pip install 'compressor\[models\]'"):
        load_teacher(TIMM_MODEL, digits8.x_val[:8], digits8.num_classes, weights=timm_checkpoint[0])


def test_torchvision_imports_in_a_fresh_interpreter():
    """The shim runs before torchvision's first import (timm imports it too), whatever build it has."""
    code = ("from compressor.intake.zoo import import_zoo; tv = import_zoo('torchvision'); "
            "import torch; m = tv.models.resnet18(num_classes=3).eval(); "
            "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1, 3)"


@pytest.mark.slow
def test_compress_a_timm_teacher_end_to_end(timm_checkpoint, predicted_profile, tmp_path, monkeypatch, capsys):
    path, _ = timm_checkpoint
    monkeypatch.chdir(tmp_path)  # no --out: the run folder is named after the model, not "timm:..."
    code = main(["--teacher", TIMM_MODEL, "--weights", str(path), "--budget", "10s",
                 "--profile", predicted_profile, "--method", "skeleton", "--sizes", "0.5", *FAST, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    run_dir = tmp_path / summary["run_dir"]
    assert run_dir.name.endswith("-test_resnet") and ":" not in run_dir.name
    m = read_manifest(run_dir)
    assert m["teacher"]["path"] == TIMM_MODEL and m["teacher"]["format"] == "timm"
    assert m["teacher"]["sha256"] == sha256_file(path)
    assert m["models"] and all((run_dir / s["files"]["onnx"]).exists() for s in m["models"])
