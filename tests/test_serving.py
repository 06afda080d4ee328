"""Serving without this package: each size folder's serve.py, preprocess.json and classes.json.

The end-to-end case builds a fresh virtual environment with only onnxruntime and numpy (no
torch, no compressor), runs serve.py there on raw samples, and compares its predictions with
the model's own on the run's preprocessed data."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from compressor.cli import main
from compressor.errors import EXIT_OK
from compressor.intake.data import load_data
from compressor.manifest import read_manifest

TEMPLATE = Path(__file__).resolve().parents[1] / "compressor" / "serving" / "serve_template.py"


def _serve_module():
    spec = importlib.util.spec_from_file_location("serve_template", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size_in,size_out", [((8, 8), (32, 32)), ((8, 8), (13, 21)), ((32, 32), (8, 8)),
                                              ((5, 7), (5, 7))])
def test_numpy_resize_is_torchs_bilinear(size_in, size_out):
    x = torch.rand(3, 1, *size_in)
    want = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False).numpy()
    got = _serve_module().resize_bilinear(x.numpy(), size_out)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize("image_size", [8, 32])
def test_the_recorded_steps_turn_raw_digits_into_what_the_model_saw(image_size):
    from sklearn.datasets import load_digits

    data = load_data("digits", image_size=image_size)
    raw = load_digits().images.astype(np.float32)  # (1797, 8, 8), values 0..16
    x = _serve_module().preprocess(raw, data.preprocess["steps"], 4)
    seen = torch.cat([data.x_train, data.x_val]).numpy()
    assert x.shape[1:] == seen.shape[1:] == (1, image_size, image_size)
    # every sample the model saw is one raw digit after the steps (the split only reorders them)
    assert np.allclose(np.sort(x.reshape(len(x), -1).sum(1)), np.sort(seen.reshape(len(seen), -1).sum(1)),
                       atol=1e-3)
    assert data.class_names == tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def run(tiny_teacher_files, predicted_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(out), "--profile",
                 predicted_profile, "--budget", "10s", "--method", "skeleton", "--sizes", "0.5",
                 "--image-size", "8", "--epochs", "1", "--no-progress"])
    assert code == EXIT_OK
    return out


def test_each_size_folder_holds_what_a_server_needs(run):
    m = read_manifest(run)
    for size in m["models"]:
        folder = run / Path(size["files"]["onnx"]).parent
        assert {"serve", "preprocess", "classes"} <= set(size["sha256"])
        assert json.loads((folder / "classes.json").read_text()) == [str(d) for d in range(10)]
        steps = json.loads((folder / "preprocess.json").read_text())["steps"]
        assert [s["op"] for s in steps] == ["scale", "normalize"]  # 8x8 digits: no resize
        from compressor.export import read_onnx_metadata

        meta = read_onnx_metadata(folder / "model.onnx")
        assert json.loads(meta["preprocess"])["steps"] == steps and json.loads(meta["classes"])[3] == "3"
    assert m["serving"]["classes"][0] == "0"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A fresh venv with only onnxruntime and numpy: no torch, no compressor."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    import onnxruntime

    pins = [f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}"]
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install {' '.join(pins)} into a fresh venv (no package registry?): "
                    f"{r.stderr.strip().splitlines()[-1:]}")
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0
    return py


def test_serve_py_in_a_venv_without_torch_predicts_what_the_model_does(run, bare_python, tmp_path):
    import onnxruntime as ort
    from sklearn.datasets import load_digits

    m = read_manifest(run)
    size = next(s for s in m["models"] if s["name"] == m["selected"])
    folder = run / Path(size["files"]["onnx"]).parent
    raw = load_digits().images.astype(np.float32)
    picks = [0, 7, 123, 1500]
    for i in picks:
        np.save(tmp_path / f"digit{i}.npy", raw[i])  # one real sample, as scikit-learn ships it
    np.save(tmp_path / "batch.npy", raw[picks])
    r = subprocess.run([str(bare_python), str(folder / "serve.py"), *(str(tmp_path / f"digit{i}.npy") for i in picks),
                        str(tmp_path / "batch.npy")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 2 * len(picks)

    # the model's own answer on the samples as the run preprocessed them
    data = load_data("digits", image_size=8)
    x_all = (torch.tensor(raw).unsqueeze(1) / 16.0 - data.preprocess["steps"][-1]["mean"]) \
        / data.preprocess["steps"][-1]["std"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x_all[picks].numpy()})[0]
    for line, row in zip(lines, [*want, *want]):
        assert line["class_index"] == int(row.argmax()) and line["class"] == str(int(row.argmax()))
        assert np.abs(np.array(line["logits"]) - row).max() < 1e-4
