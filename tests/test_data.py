import numpy as np
import pytest
import torch

from compressor.intake.data import load_data
from compressor.errors import DataError


def test_digits_split_is_deterministic_and_stratified():
    a = load_data("digits", seed=3, image_size=16)
    b = load_data("digits", seed=3, image_size=16)
    c = load_data("digits", seed=4, image_size=16)
    assert a.x_train.shape[1:] == (1, 16, 16) and a.num_classes == 10
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.x_val) + len(a.x_train) == 1797
    assert set(a.y_val.tolist()) == set(range(10))


def test_digits_are_read_as_scikit_learn_loads_them(monkeypatch):
    """The CSV read directly gives load_digits' arrays, and without the file the public loader is used."""
    import numpy as np
    from sklearn.datasets import load_digits

    from compressor.intake import data as D

    d = load_digits()
    images, target = D.digits_arrays()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, d.images) and np.array_equal(target, d.target)
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    images, target = D.digits_arrays()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)


def test_mnist1d_generates_offline():
    d = load_data("mnist1d", seed=0)
    assert d.x_train.shape[1:] == (40,) and d.num_classes == 10


def test_npz_with_and_without_val(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.normal(size=(50, 3, 5)).astype(np.float32), y=rng.integers(0, 4, 50))
    d = load_data(str(p), seed=0)
    assert d.x_train.shape[1:] == (3, 5) and len(d.x_train) + len(d.x_val) == 50
    p2 = tmp_path / "e.npz"
    np.savez(p2, x=np.zeros((10, 4)), y=np.arange(10) % 2, x_val=np.ones((3, 4)), y_val=np.array([0, 1, 1]))
    d2 = load_data(str(p2))
    assert len(d2.x_val) == 3 and d2.num_classes == 2


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_data(str(tmp_path), image_size=8)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.num_classes == 2
    assert len(d.x_train) + len(d.x_val) == 6


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "not found"),
    (lambda p: (p / "empty").mkdir(), "no class subfolders"),
    (lambda p: (p / "noimg" / "a").mkdir(parents=True), "contains no images"),
    (lambda p: np.savez(p / "nox.npz", y=np.arange(3)), "no array 'x'"),
    (lambda p: np.savez(p / "bad.npz", x=np.zeros((4, 2)), y=np.arange(3)), "one label per sample"),
    (lambda p: (p / "corrupt.npz").write_bytes(b"garbage"), "cannot read"),
    (lambda p: (p / "file.csv").write_text("1,2"), "neither a .npz"),
])
def test_bad_data_is_one_line_error(tmp_path, make, match):
    make(tmp_path)
    target = {"not found": "missing.npz", "no class subfolders": "empty", "contains no images": "noimg",
              "no array 'x'": "nox.npz", "one label per sample": "bad.npz", "cannot read": "corrupt.npz",
              "neither a .npz": "file.csv"}[match]
    with pytest.raises(DataError, match=match) as e:
        load_data(str(tmp_path / target))
    assert "\n" not in str(e.value)
