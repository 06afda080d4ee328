"""Datasets: built-in digits and mnist1d, `.npz` files, image folders.

Splits are deterministic for a seed (a seeded permutation, stratified by class
so small classes appear in validation), so a resumed run sees the same data.
"""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import DataError
from ..files import first_line, zip_bomb
from ..types import DataSplits

BUILTIN = ("digits", "mnist1d")
# .npz data is used as stored: a server feeds samples shaped and scaled like its `x` rows
_AS_IS = {"input": {"kind": "array", "description": "a sample as stored in the .npz 'x' array"}, "steps": []}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_data(spec: str, seed: int = 0, image_size: int | None = 32, val_fraction: float = 0.2) -> DataSplits:
    """`spec` is 'digits', 'mnist1d', a `.npz` file (x, y; optional x_val, y_val) or a folder
    with one subfolder of images per class."""
    if spec == "digits":
        x, y, steps = _digits(image_size)
        x, norm = _standardise(x)
        prep = {"input": {"kind": "array", "shape": [8, 8], "dtype": "float32",
                          "description": "an 8x8 grayscale digit with values 0..16 (scikit-learn load_digits images)"},
                "steps": [*steps, norm]}
        return _split("digits", x, y, seed, val_fraction, 10, prep, tuple(str(d) for d in range(10)))
    if spec == "mnist1d":
        x, y = _mnist1d(seed)
        x, norm = _standardise(x)
        prep = {"input": {"kind": "array", "shape": list(x.shape[1:]), "dtype": "float32",
                          "description": "an mnist1d sequence (mnist1d.data.make_dataset 'x' rows)"},
                "steps": [norm]}
        return _split("mnist1d", x, y, seed, val_fraction, 10, prep, tuple(str(d) for d in range(10)))
    path = Path(spec)
    try:
        found, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # a name too long for the filesystem, a loop of links, ...
        raise DataError(f"data {spec!r} cannot be opened: {e.strerror or e}") from None
    if not found:
        raise DataError(f"data {spec!r} not found (expected 'digits', 'mnist1d', a .npz file or an image folder)")
    if is_dir:
        x, y, names, image_step = _image_folder(path, image_size)
        x, norm = _standardise(x)
        prep = {"input": {"kind": "image", "description": f"an image file, as in the class folders of {path.name}"},
                "steps": [image_step, {"op": "scale", "factor": 1 / 255}, norm]}
        return _split(path.name, x, y, seed, val_fraction, len(names), prep, names)
    if path.suffix == ".npz":
        return _npz(path, seed, val_fraction)
    raise DataError(f"data {spec!r} is neither a .npz file nor an image folder")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1,797 images of 8x8, labels 0-9), as `sklearn.datasets.load_digits`
    returns them, read from the CSV file scikit-learn ships: importing `sklearn.datasets` takes about
    1.3 s of every run's start, and reading the file 0.01 s."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = (Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
            if spec and spec.submodule_search_locations else None)
    if path is None or not path.is_file():  # laid out otherwise: the public loader
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _digits(image_size: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # 8x8, values 0..16
    steps: list[dict] = [{"op": "scale", "factor": 1 / 16}]
    if image_size and image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        steps.append({"op": "resize", "size": [image_size, image_size], "mode": "bilinear"})
    return x, torch.tensor(target, dtype=torch.long), steps


def _mnist1d(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed  # generated offline; get_dataset() would download
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Zero mean, unit variance with one global mean/std: trivially reproducible at serving time,
    and recorded as the `normalize` step a server applies."""
    mean, std = float(x.mean()), float(x.std()) + 1e-8
    return (x - mean) / std, {"op": "normalize", "mean": mean, "std": std}


def _npz(path: Path, seed: int, val_fraction: float) -> DataSplits:
    if not zipfile.is_zipfile(path):  # reads the end of the file only; np.load would try it as a pickle
        raise DataError(f"cannot read {path}: not a .npz archive (a .npz file is a zip of .npy arrays, "
                        f"as np.savez writes)")
    if bomb := zip_bomb(path):  # np.load would inflate every member into memory
        raise DataError(f"cannot read {path}: {bomb}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if "allow_pickle" in str(e):  # numpy's text suggests loading it unsafely: not our advice
            raise DataError(f"cannot read {path}: it holds pickled Python objects (loading them could run "
                            f"code); save plain numeric arrays with np.savez") from None
        raise DataError(f"cannot read {path}: {first_line(e)}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path} has no array {key!r} (found: {', '.join(arrays) or 'none'})")
    x, y = _check_xy(path, arrays["x"], arrays["y"])
    _check_classes(str(path), y)
    n_classes = int(y.max()) + 1
    if "x_val" in arrays and "y_val" in arrays:
        xv, yv = _check_xy(path, arrays["x_val"], arrays["y_val"], "x_val", "y_val")
        if xv.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_val samples have shape {tuple(xv.shape[1:])}, x has {tuple(x.shape[1:])}")
        return DataSplits(path.stem, x, y, xv, yv, max(n_classes, int(yv.max()) + 1), _AS_IS)
    return _split(path.stem, x, y, seed, val_fraction, n_classes, _AS_IS)


def _check_xy(path: Path, x: np.ndarray, y: np.ndarray, xn: str = "x",
              yn: str = "y") -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2:
        raise DataError(f"{path}: {xn} must have a sample dimension and at least one feature dimension, "
                        f"got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: {yn} must be one label per sample: {xn} has {len(x)} samples, {yn} has shape "
                        f"{y.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {xn} must be numeric and {yn} integer class labels (got {x.dtype}, {y.dtype})")
    if len(x) == 0:
        raise DataError(f"{path}: no samples")
    if y.min() < 0:
        raise DataError(f"{path}: labels must be 0..K-1, found {y.min()} in {yn}")
    xf = x.astype(np.float32)
    if not np.isfinite(xf).all():  # NaN/Inf (or values beyond float32) poison every loss and statistic
        bad = int(xf.size - np.isfinite(xf).sum())
        raise DataError(f"{path}: {xn} holds {bad} NaN or infinite value(s) (as float32); clean the data first")
    return torch.from_numpy(xf), torch.from_numpy(y.astype(np.int64))


def _check_classes(name: str, y: torch.Tensor) -> None:
    """Classification needs two classes at least: one class teaches nothing and scores 100 %."""
    present = torch.unique(y)
    if len(present) < 2:
        raise DataError(f"{name}: every sample has the same label ({int(present[0])}): "
                        f"need at least 2 classes to learn from")


def _image_folder(path: Path, image_size: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"image folder {path} has no class subfolders (expected one folder of images per class)")
    xs, ys, mode, size = [], [], None, None
    for label, cls in enumerate(classes):
        for f in sorted(cls.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(f)
                img.load()
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
                raise DataError(f"cannot read image {f}: {e}") from None
            mode = mode or ("L" if img.mode in ("L", "1", "P", "I", "I;16") else "RGB")
            size = size or ((image_size, image_size) if image_size else img.size)
            img = img.convert(mode).resize(size)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"image folder {path} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    _check_classes(f"image folder {path}", torch.tensor(ys))
    x = torch.from_numpy(np.stack(xs))
    step = {"op": "image", "mode": mode, "size": list(size), "resample": "pillow-default"}
    return x, torch.tensor(ys, dtype=torch.long), tuple(c.name for c in classes), step


def _split(name: str, x: torch.Tensor, y: torch.Tensor, seed: int, val_fraction: float,
           num_classes: int, preprocess: dict | None = None, class_names: tuple[str, ...] = ()) -> DataSplits:
    if len(x) < 2:
        raise DataError(f"{name}: need at least 2 samples to split into train and validation, got {len(x)}")
    rng = np.random.default_rng(seed)
    val_idx, train_idx = [], []
    for c in np.unique(y.numpy()):
        idx = np.flatnonzero(y.numpy() == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    if not val_idx:
        val_idx, train_idx = train_idx[-1:], train_idx[:-1]
    train = torch.tensor(sorted(train_idx))
    val = torch.tensor(sorted(val_idx))
    # shuffle the order within each split once, deterministically
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))]
    return DataSplits(name, x[train].contiguous(), y[train].contiguous(), x[val].contiguous(),
                      y[val].contiguous(), int(num_classes), preprocess or {}, class_names)
