"""Fault injection, part 3: hostile and careless inputs.

The promise under test: bad input ends in ONE line, ``compress: error: ...`` on stderr,
that names the problem, and exit code 2 (3 where no size can meet the budget); never a
traceback; nothing already in the output folder is touched; and a pickle that would run
code is never unpickled without ``--trust-pickle``.

Every case goes through ``compressor.cli.main`` (in-process), except the race, which
starts two real ``compress`` processes.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compressor.cli import main
from compressor.errors import EXIT_BUDGET_NOT_MET, EXIT_OK, EXIT_USAGE
from compressor.manifest import read_manifest

from .conftest import FAST, RUN, one_line_error, snapshot

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # tiny_models, for --arch and hand-built teachers

from tiny_models import TinyResidual, randomise_bn  # noqa: E402

TEN_GB = 10 * 2**30


# ------------------------------------------------------------------------------ helpers

class Payload:
    """Unpickling this creates `marker`: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _sparse(path: Path, size: int = TEN_GB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # a hole: no disk, no memory, but 10 GB to anything that reads it all
    return path


def _run(args: list[str], out: Path, *, fast: list[str] = FAST, budget: str = "1ms") -> int:
    if not any(a.startswith("--budget") for a in args):
        args = [*args, "--budget", budget]
    return main([*args, "--out", str(out), *fast])


def _scripted(module: nn.Module) -> nn.Module:
    return torch.jit.script(module.eval())


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TinyResidual()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        return y, y


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TinyResidual()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.body(x)}


def _patch_zip_sizes(path: Path, member: str, claimed: int) -> None:
    """Make `member` claim `claimed` uncompressed bytes in both of its zip headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        local, pos = z.getinfo(member).header_offset, z.start_dir
    struct.pack_into("<I", data, local + 22, claimed)  # local header: uncompressed size
    while data[pos:pos + 4] == b"PK\x01\x02":  # central directory entries
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + n] == member.encode():
            struct.pack_into("<I", data, pos + 24, claimed)
        pos += 46 + n + m + k
    path.write_bytes(bytes(data))


def _torchscript_like_zip(path: Path, big_member: str, big: int, *, deflate: bool) -> Path:
    """A zip laid out like a TorchScript archive whose weight member is (or claims to be) huge."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        z.writestr("archive/version", "3\n")
        z.writestr("archive/code/__torch__.py", "")
        z.writestr("archive/constants.pkl", pickle.dumps(()))
        z.writestr("archive/data.pkl", pickle.dumps({}))
        if deflate:  # really expands: `big` zero bytes, streamed in, ~1000x smaller on disk
            info = zipfile.ZipInfo(big_member)
            info.compress_type = zipfile.ZIP_DEFLATED
            chunk = bytes(1 << 20)
            with z.open(info, "w", force_zip64=True) as f:
                for _ in range(big // len(chunk)):
                    f.write(chunk)
        else:
            z.writestr(big_member, b"0123456789abcdef")
    if not deflate:
        _patch_zip_sizes(path, big_member, big)
    return path


# The runs that get past intake use one of these, so the suite stays within minutes on two shared cores:
# a predicted profile (no timing, no calibration, no fresh-process re-measurement) and, where the
# calibration cache itself is under test, a measured profile with few repeats.
_PREDICTED = """\
name = "faults-predicted"
backend = "onnxruntime-cpu"
measured = false
[device]
peak_gflops = { fp32 = 100.0 }
memory_bandwidth_gbs = 20.0
layer_overhead_us = 5.0
"""
_QUICK = """\
name = "faults-quick"
backend = "onnxruntime-cpu"
measured = true
threads = 1
warmup_runs = 2
warmup_seconds = 0.0
repeats = 10
min_seconds = 0.0
"""


@pytest.fixture(scope="session")
def profiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault-profiles")
    (d / "faults-predicted.toml").write_text(_PREDICTED)
    (d / "faults-quick.toml").write_text(_QUICK)
    return {"predicted": d / "faults-predicted.toml", "quick": d / "faults-quick.toml"}


@pytest.fixture
def run_args(profiles):
    """A whole tiny run: skeleton method, one size, a predicted profile."""
    return [*RUN, "--profile", str(profiles["predicted"])]


# ------------------------------------------------------------------------------ hostile teachers

@pytest.fixture(scope="session")
def hostile_teachers(tmp_path_factory, tiny_teacher_files, digits8):
    """Every bad teacher, built once. Values: (path, extra args, words the error must name)."""
    d = tmp_path_factory.mktemp("hostile-teachers")
    x = digits8.x_val[:4]
    ts = tiny_teacher_files["torchscript"].read_bytes()
    cases: dict[str, tuple[Path, list[str], tuple[str, ...]]] = {}

    (d / "half.pt").write_bytes(ts[: len(ts) // 2])
    cases["truncated-torchscript-half"] = (d / "half.pt", [], ("half.pt", "damaged zip"))
    (d / "tail.pt").write_bytes(ts[:-30])  # only the end-of-archive record is missing
    cases["truncated-torchscript-tail"] = (d / "tail.pt", [], ("tail.pt", "damaged zip"))
    (d / "empty.pt").write_bytes(b"")
    cases["empty-file"] = (d / "empty.pt", [], ("empty.pt", "is empty"))
    (d / "a-folder.pt").mkdir()
    cases["directory"] = (d / "a-folder.pt", [], ("not a file",))
    (d / "junk.pt2").write_bytes(b"not an exported program")
    cases["junk-pt2"] = (d / "junk.pt2", [], ("junk.pt2", "cannot be loaded"))
    cases["sparse-10GB"] = (_sparse(d / "huge.pt"), [], ("huge.pt", "not a torchscript"))
    cases["name-too-long"] = (d / ("t" * 300 + ".pt"), [], ("cannot be opened", "too long"))

    # zip bombs: refused from the zip's directory, before anything is expanded
    cases["zip-bomb-deflate-128MiB"] = (
        _torchscript_like_zip(d / "bomb.pt", "archive/data/0", 128 << 20, deflate=True), [], ("bomb.pt", "zip bomb"))
    cases["zip-member-claims-4GiB"] = (
        _torchscript_like_zip(d / "claims.pt", "archive/data/0", 0xFFFF0000, deflate=False), [],
        ("claims.pt", "zip bomb"))

    nan_model = randomise_bn(TinyResidual()).eval()
    with torch.no_grad():
        for p in nan_model.parameters():
            p.fill_(float("nan"))
    torch.jit.save(torch.jit.trace(nan_model, x), d / "nan.pt")
    cases["nan-weights"] = (d / "nan.pt", [], ("nan.pt", "nan or infinite"))

    torch.jit.save(torch.jit.trace(TinyResidual(classes=5).eval(), x), d / "five.pt")
    cases["wrong-class-count"] = (d / "five.pt", [], ("teacher scores 5 classes", "labels run 0..9"))
    torch.jit.save(_scripted(_TupleOut()), d / "tuple.pt")
    cases["returns-tuple"] = (d / "tuple.pt", [], ("tuple",))
    torch.jit.save(_scripted(_DictOut()), d / "dict.pt")
    cases["returns-dict"] = (d / "dict.pt", [], ("dict",))

    # .pt2 programs whose input shape does not match the data
    cases["pt2-image-size-mismatch"] = (tiny_teacher_files["export"], ["--image-size", "16"],
                                        ("does not accept the data", "(1, 16, 16)"))
    rgb = TinyResidual(in_ch=3).eval()
    ep = torch.export.export(rgb, (torch.randn(4, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(ep, d / "rgb.pt2")
    cases["pt2-channel-mismatch"] = (d / "rgb.pt2", [], ("does not accept the data", "(1, 8, 8)"))
    ep = torch.export.export(tiny_teacher_files["model"], (x,))  # static batch of 4; the check uses 8
    torch.export.save(ep, d / "static.pt2")
    cases["pt2-static-batch"] = (d / "static.pt2", [], ("does not accept the data",))
    return cases


TEACHER_CASES = ["truncated-torchscript-half", "truncated-torchscript-tail", "empty-file", "directory", "junk-pt2",
                 "sparse-10GB", "name-too-long", "zip-bomb-deflate-128MiB", "zip-member-claims-4GiB", "nan-weights",
                 "wrong-class-count", "returns-tuple", "returns-dict", "pt2-image-size-mismatch",
                 "pt2-channel-mismatch", "pt2-static-batch"]


@pytest.mark.parametrize("case", TEACHER_CASES)
def test_hostile_teacher(case, hostile_teachers, precious_run, capsys):
    path, extra, words = hostile_teachers[case]
    before = snapshot(precious_run)
    fast = [a for a in FAST if a not in ("--image-size", "8")] if "--image-size" in extra else FAST
    t0 = time.perf_counter()
    code = _run(["--teacher", str(path), *extra], precious_run, fast=fast)
    one_line_error(capsys, code, EXIT_USAGE, "teacher", *words)
    assert time.perf_counter() - t0 < 30  # refused, not read or expanded
    assert snapshot(precious_run) == before


# ------------------------------------------------------------------------------ hostile data

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _digits_like(n: int = 60, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), (np.arange(n) % classes).astype(np.int64)


def _images(folder: Path, sizes: list[tuple[int, int]], mode: str = "L") -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(sizes))
    for i, (w, h) in enumerate(sizes):
        shape = (h, w) if mode == "L" else (h, w, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")


def _data_case(case: str, d: Path) -> tuple[Path, tuple[str, ...]]:
    """Build one hostile data spec under `d`; returns it and the words its error must name."""
    x, y = _digits_like()
    if case == "npz-nan":
        x[3, 0, 2, 2] = np.nan
        return _npz(d / "nan.npz", x=x, y=y), ("nan.npz", "1 nan or infinite")
    if case == "npz-inf":
        x[5, 0, 1, 1] = np.inf
        return _npz(d / "inf.npz", x=x, y=y), ("inf.npz", "1 nan or infinite")
    if case == "npz-nan-in-x_val":
        xv, yv = _digits_like(20)
        xv[0, 0, 0, 0] = np.nan
        return _npz(d / "valnan.npz", x=x, y=y, x_val=xv, y_val=yv), ("valnan.npz", "x_val holds 1 nan or infinite")
    if case == "npz-single-class":
        return _npz(d / "one.npz", x=x, y=np.zeros_like(y)), ("one.npz", "same label (0)", "2 classes")
    if case == "npz-negative-label":
        y[7] = -1
        return _npz(d / "neg.npz", x=x, y=y), ("neg.npz", "labels must be 0..k-1, found -1")
    if case == "npz-label-beyond-teacher":
        y[7] = 10  # the teacher scores 10 classes: labels must be 0..9
        return _npz(d / "big-label.npz", x=x, y=y), ("teacher scores 10 classes", "labels run 0..10")
    if case == "npz-huge-label":
        y[7] = 2**40  # must not size anything by the largest label
        return _npz(d / "huge-label.npz", x=x, y=y), ("labels run 0..1099511627776",)
    if case == "npz-sparse-10GB":
        return _sparse(d / "huge.npz"), ("huge.npz", "not a .npz archive")
    if case == "sparse-10GB-no-suffix":
        return _sparse(d / "huge.bin"), ("huge.bin", "neither a .npz file nor an image folder")
    if case == "name-too-long":
        return d / ("n" * 300 + ".npz"), ("cannot be opened", "too long")
    if case == "npz-zip-bomb":  # x.npy claims and really inflates to 128 MiB from ~130 KB
        path = d / "bomb.npz"
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (1 << 19, 1, 8, 8)})
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            info = zipfile.ZipInfo("x.npy")
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                f.write(header.getvalue())
                chunk = bytes(1 << 20)
                for _ in range(128):
                    f.write(chunk)
            buf = io.BytesIO()
            np.save(buf, y)
            z.writestr("y.npy", buf.getvalue())
        assert path.stat().st_size < 2 << 20  # small on disk
        return path, ("bomb.npz", "zip bomb")
    if case == "folder-empty":
        (d / "empty").mkdir()
        return d / "empty", ("empty", "no class subfolders")
    if case == "folder-classes-without-images":
        for c in ("a", "b"):
            (d / "noimg" / c).mkdir(parents=True)
            (d / "noimg" / c / "notes.txt").write_text("no images here")
        return d / "noimg", ("noimg", "no images")
    if case == "folder-single-class":
        _images(d / "single" / "only", [(8, 8)] * 6)
        return d / "single", ("single", "same label (0)")
    if case == "folder-corrupt-image":
        _images(d / "corrupt" / "a", [(8, 8)] * 3)
        _images(d / "corrupt" / "b", [(8, 8)] * 3)
        (d / "corrupt" / "b" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        return d / "corrupt", ("cannot read image", "9.png")
    if case == "folder-sparse-10GB-image":
        _images(d / "sparse" / "a", [(8, 8)] * 3)
        _images(d / "sparse" / "b", [(8, 8)] * 3)
        _sparse(d / "sparse" / "b" / "huge.png")
        return d / "sparse", ("cannot read image", "huge.png")
    if case == "folder-image-decompression-bomb":  # a tiny PNG that declares 200000 x 200000 pixels
        import zlib

        from PIL import Image

        _images(d / "pixbomb" / "a", [(8, 8)] * 3)
        _images(d / "pixbomb" / "b", [(8, 8)] * 3)
        buf = io.BytesIO()
        Image.new("L", (1, 1)).save(buf, "PNG")
        png = bytearray(buf.getvalue())
        struct.pack_into(">II", png, 16, 200_000, 200_000)  # IHDR width, height
        struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))  # IHDR checksum
        (d / "pixbomb" / "b" / "bomb.png").write_bytes(bytes(png))
        return d / "pixbomb", ("cannot read image", "bomb.png")
    raise KeyError(case)


DATA_CASES = ["npz-nan", "npz-inf", "npz-nan-in-x_val", "npz-single-class", "npz-negative-label",
              "npz-label-beyond-teacher", "npz-huge-label", "npz-sparse-10GB", "sparse-10GB-no-suffix",
              "npz-zip-bomb", "folder-empty", "folder-classes-without-images", "folder-single-class",
              "folder-corrupt-image", "folder-sparse-10GB-image", "folder-image-decompression-bomb",
              "name-too-long"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_hostile_data(case, tmp_path, tiny_teacher_files, precious_run, capsys):
    spec, words = _data_case(case, tmp_path)
    before = snapshot(precious_run)
    t0 = time.perf_counter()
    code = _run(["--teacher", str(tiny_teacher_files["torchscript"]), "--data", str(spec)], precious_run)
    one_line_error(capsys, code, EXIT_USAGE, *words)
    assert time.perf_counter() - t0 < 30  # a 10 GB file is refused, not read
    assert snapshot(precious_run) == before


def test_mixed_image_sizes_are_resized(tmp_path):
    """Mixed sizes and modes in one folder: resized to --image-size (the CLI always has one);
    without a size (API), to the first image's size and mode."""
    from compressor.intake.data import load_data

    _images(tmp_path / "mixed" / "a", [(8, 8), (13, 5), (32, 32)])
    _images(tmp_path / "mixed" / "b", [(9, 9), (4, 20)], mode="RGB")
    data = load_data(str(tmp_path / "mixed"), image_size=8)
    assert data.x_train.shape[1:] == (1, 8, 8) and data.num_classes == 2
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_val).all()
    data = load_data(str(tmp_path / "mixed"), image_size=None)
    assert data.x_train.shape[1:] == (1, 8, 8)  # a/0.png is 8x8, grey


def test_mixed_image_sizes_run_through_the_cli(tmp_path, tiny_teacher_files, run_args, capsys):
    """The recovery end to end: a folder of mixed sizes and modes compresses."""
    rng = np.random.default_rng(1)
    for c in range(10):
        _images(tmp_path / "mixed" / f"c{c}", [tuple(int(v) for v in rng.integers(5, 20, 2)) for _ in range(4)],
                mode="RGB" if c % 2 else "L")  # the first class sets the mode
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--data", str(tmp_path / "mixed"),
                 "--out", str(out), *run_args])
    assert code == EXIT_OK, capsys.readouterr().err
    m = read_manifest(out)
    assert m["teacher"]["input_shape"] == [1, 8, 8] and m["selected"]


# ------------------------------------------------------------------------------ budgets

@pytest.mark.parametrize("form", ["separate", "equals"])
@pytest.mark.parametrize("budget,words", [
    ("0ms", ("0ms", "positive")),
    ("-1ms", ("-1ms",)),
    ("1e309ms", ("1e309ms",)),
    ("1e-400ms", ("1e-400ms", "positive")),
    ("fast", ("fast",)),
    ("0x", ("0x", "positive")),
    ("nanms", ("nanms",)),
    ("", ("budget",)),
])
def test_hostile_budget(budget, words, form, tiny_teacher_files, precious_run, capsys):
    """`--budget -1ms` reaches argparse as an option-like word; `--budget=-1ms` reaches the parser."""
    before = snapshot(precious_run)
    flag = ["--budget", budget] if form == "separate" else [f"--budget={budget}"]
    code = _run(["--teacher", str(tiny_teacher_files["torchscript"]), *flag], precious_run)
    one_line_error(capsys, code, EXIT_USAGE, *words)
    assert snapshot(precious_run) == before


@pytest.mark.parametrize("argv,words", [
    (["--budget"], ("--budget", "expected one argument")),
    (["--budgett", "1ms"], ("unrecognized arguments", "--budgett")),
    (["--epochs", "many"], ("--epochs", "invalid int value")),
    (["--method", "fastest"], ("--method", "invalid choice")),
    (["pick"], ("run_dir",)),
])
def test_usage_errors_are_one_line(argv, words, tiny_teacher_files, capsys):
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), *argv] if argv[0] != "pick" else argv)
    one_line_error(capsys, code, EXIT_USAGE, *words)


def test_unmeetable_budget_is_exit_3_with_a_report(tmp_path, tiny_teacher_files, run_args, capsys):
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(out),
                 *[a if a != "10s" else "1e-300ms" for a in run_args]])
    err = capsys.readouterr().err
    assert code == EXIT_BUDGET_NOT_MET, err
    assert "Traceback" not in err and "no size meets" in err
    m = read_manifest(out)
    assert m["selected"] is None and not m["budget_met"]


# ------------------------------------------------------------------------------ profiles

_GOOD_PROFILE = """\
name = "mine"
backend = "onnxruntime-cpu"
measured = true
threads = 1
repeats = 5
min_seconds = 0.0
"""


@pytest.mark.parametrize("text,words", [
    ('name = "mine"\n', ("missing required key 'backend'",)),
    ('backend = "onnxruntime-cpu"\n', ("missing required key 'name'",)),
    ("", ("missing required key",)),
    ('name = "mine"\nbackend = "onnxruntime-cpu"\nmeasured = false\n', ("missing required key 'device'",)),
    (_GOOD_PROFILE.replace("threads = 1", 'threads = "one"'), ("'threads'", "integer")),
    (_GOOD_PROFILE.replace("threads = 1", "threads = true"), ("'threads'", "integer")),
    (_GOOD_PROFILE.replace("measured = true", 'measured = "yes"'), ("'measured'", "true or false")),
    (_GOOD_PROFILE.replace("min_seconds = 0.0", "min_seconds = nan"), ("'min_seconds'", "finite")),
    (_GOOD_PROFILE.replace("repeats = 5", "repeats = -5"), ("'repeats'", "at least 1")),
    (_GOOD_PROFILE + "device = 3\n", ("'device'", "table")),
    (_GOOD_PROFILE.replace("repeats = 5", "repeat = 5"), ("unknown key 'repeat'", "repeats")),
    (_GOOD_PROFILE + "[device]\npeak_gflops = { fp32 = 1.0 }\nmemory_bandwidth_gbs = 1.0\n"
     "layer_overhead_us = 1.0\nclock_ghz = 3.0\n", ("unknown key 'device.clock_ghz'",)),
    (_GOOD_PROFILE + "[extra]\nx = 1\n", ("unknown key 'extra'",)),
    ("name = \n", ("not valid toml",)),
], ids=["no-backend", "no-name", "empty", "predicted-without-device", "threads-string", "threads-bool",
        "measured-string", "min-seconds-nan", "repeats-negative", "device-not-table", "unknown-repeat",
        "unknown-device-key", "unknown-table", "not-toml"])
def test_hostile_profile(text, words, tmp_path, tiny_teacher_files, precious_run, capsys):
    prof = tmp_path / "mine.toml"
    prof.write_text(text)
    before = snapshot(precious_run)
    for flag in ("--profile", "--also-profile"):
        code = _run(["--teacher", str(tiny_teacher_files["torchscript"]), flag, str(prof)], precious_run)
        one_line_error(capsys, code, EXIT_USAGE, "mine.toml", *words)
    assert snapshot(precious_run) == before


@pytest.mark.parametrize("kind", ["directory", "binary", "missing"])
def test_profile_path_that_is_not_a_profile(kind, tmp_path, tiny_teacher_files, capsys):
    prof = tmp_path / "odd.toml"
    if kind == "directory":
        prof.mkdir()
    elif kind == "binary":
        prof.write_bytes(b"\xff\xfe\x00\x80garbage")
    code = _run(["--teacher", str(tiny_teacher_files["torchscript"]), "--profile", str(prof)], tmp_path / "o")
    one_line_error(capsys, code, EXIT_USAGE, "odd.toml")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ careless config files

@pytest.mark.parametrize("key", ["teacher", "data", "out", "profile"])
def test_nul_character_in_a_path_from_a_config_file(key, tmp_path, tiny_teacher_files, precious_run, capsys):
    """A JSON config can carry what a shell cannot: a NUL inside a path."""
    values = {"teacher": str(tiny_teacher_files["torchscript"]), "budget": "1ms", "out": str(precious_run),
              "image_size": 8, "calibration_models": 6, "epochs": 1, "progress": False}
    values[key] = str(tmp_path / "a\u0000b")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(values))
    before = snapshot(precious_run)
    code = main(["--config", str(cfg)])
    one_line_error(capsys, code, EXIT_USAGE, key)
    assert snapshot(precious_run) == before


# ------------------------------------------------------------------------------ output

def test_unwritable_output_folder_by_permissions(tmp_path, tiny_teacher_files, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod cannot make a folder unwritable (see the path-under-a-file case)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = _run(["--teacher", str(tiny_teacher_files["torchscript"])], ro / "run")
        one_line_error(capsys, code, EXIT_USAGE, "cannot write", "ro")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("case", ["under-a-file", "deep-under-a-file", "is-a-file", "name-too-long",
                                  "finished-run", "partial-run"])
def test_unusable_output(case, tmp_path, tiny_teacher_files, precious_run, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file, not a folder")
    partial = tmp_path / "partial"
    (partial / "family").mkdir(parents=True)
    (partial / "family" / "checkpoint.pt").write_bytes(b"earlier checkpoint")
    out, words = {
        "under-a-file": (blocker / "run", ("cannot write", "blocker")),
        "deep-under-a-file": (blocker / "a" / "b" / "run", ("cannot write", "blocker")),
        "is-a-file": (blocker, ("not a folder",)),
        "name-too-long": (tmp_path / ("r" * 300), ("cannot write",)),
        "finished-run": (precious_run, ("already holds a finished run",)),
        "partial-run": (partial, ("already holds a partial run",)),
    }[case]
    before = [snapshot(precious_run), snapshot(partial), blocker.read_text()]
    code = _run(["--teacher", str(tiny_teacher_files["torchscript"])], out)
    one_line_error(capsys, code, EXIT_USAGE, *words)
    assert [snapshot(precious_run), snapshot(partial), blocker.read_text()] == before


def test_two_runs_racing_for_one_output_folder(tmp_path, tiny_teacher_files, run_args):
    """Exactly one of two simultaneous runs into one --out finishes; the other says why in one line;
    the finished run's manifest reads back valid."""
    out = tmp_path / "race"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # COMPRESSOR_CACHE_DIR: the session's (autouse fixture)
    cmd = [sys.executable, "-m", "compressor", "--teacher", str(tiny_teacher_files["torchscript"]),
           "--out", str(out), *run_args]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [EXIT_OK, EXIT_USAGE], results
    loser = next(r for r in results if r[0] == EXIT_USAGE)
    err = [line for line in loser[2].strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("compress: error:") and str(out) in err[0], loser[2]
    assert any(w in err[0] for w in ("taken by another compress run", "already holds a")), err
    print(f"[race] {err[0]}")
    assert "Traceback" not in loser[2]
    m = read_manifest(out)
    for size in m["models"]:
        assert (out / size["files"]["onnx"]).is_file()


# ------------------------------------------------------------------------------ pickles that run code

@pytest.fixture
def marker(tmp_path):
    """The file a payload would create; proves the payload is live when unpickled on purpose."""
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()  # the payload really runs code when unpickled
    return tmp_path / "payload-ran"


@pytest.mark.parametrize("case", ["whole-object-torch-save", "legacy-torch-save", "raw-pickle",
                                  "state-dict-with-payload", "checkpoint-dict-with-payload"])
def test_pickled_teacher_never_runs_without_trust(case, marker, tmp_path, tiny_teacher_files, precious_run,
                                                  capsys):
    path = tmp_path / "teacher.pt"
    sd = tiny_teacher_files["model"].state_dict()
    extra: list[str] = []
    if case == "whole-object-torch-save":
        torch.save(Payload(marker), path)
    elif case == "legacy-torch-save":
        torch.save(Payload(marker), path, _use_new_zipfile_serialization=False)
    elif case == "raw-pickle":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif case == "state-dict-with-payload":
        torch.save({**sd, "fc.extra": Payload(marker)}, path)
        extra = ["--arch", "tiny_models:make_tiny"]
    else:
        torch.save({"state_dict": sd, "epoch": 3, "hook": Payload(marker)}, path)
        extra = ["--arch", "tiny_models:make_tiny"]
    before = snapshot(precious_run)
    code = _run(["--teacher", str(path), *extra], precious_run)
    one_line_error(capsys, code, EXIT_USAGE, "teacher.pt", "--trust-pickle")
    assert not marker.exists()
    assert snapshot(precious_run) == before


@pytest.mark.parametrize("where", ["npz-object-array", "pickle-named-npz"])
def test_pickled_data_never_runs(where, marker, tmp_path, tiny_teacher_files, capsys):
    path = tmp_path / "data.npz"
    if where == "npz-object-array":
        x, y = _digits_like()
        np.savez(path, x=np.array([Payload(marker)] * len(x), dtype=object), y=y)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    code = _run(["--teacher", str(tiny_teacher_files["torchscript"]), "--data", str(path)], tmp_path / "o")
    one_line_error(capsys, code, EXIT_USAGE, "data.npz", "pickled python objects" if where == "npz-object-array"
                   else "not a .npz archive")
    assert not marker.exists()


def test_payload_in_skeleton_checkpoint_on_resume(marker, tmp_path, tiny_teacher_files, run_args, capsys):
    """(c) a run folder's student checkpoint replaced by a payload, then --resume."""
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"c1.weight": torch.zeros(1), "x": Payload(marker)}, out / "student.pt")
    before = (out / "student.pt").read_bytes()
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(out), "--resume", *run_args])
    one_line_error(capsys, code, EXIT_USAGE, "student.pt", "pickled python objects", mid_run=True)
    assert not marker.exists()
    assert (out / "student.pt").read_bytes() == before  # the evidence is left where it was
    assert not (out / "manifest.json").exists()


def test_payload_in_family_checkpoint_on_resume(marker, tmp_path, tiny_teacher_files, profiles, capsys):
    """(c) the nested family's epoch checkpoint (family/checkpoint.pt) replaced by a payload, then --resume."""
    from compressor.distill.train import CHECKPOINT

    out = tmp_path / "run"
    (out / "family").mkdir(parents=True)
    torch.save({"format": 1, "family": Payload(marker)}, out / "family" / CHECKPOINT)
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(out), "--resume",
                 "--budget", "10s", "--trials", "2", "--sizes", "0.5", "--profile", str(profiles["predicted"]), *FAST])
    one_line_error(capsys, code, EXIT_USAGE, f"family/{CHECKPOINT}", "pickled python objects", mid_run=True)
    assert not marker.exists()
    assert not (out / "manifest.json").exists()


def test_payload_in_latency_cache_is_recomputed(marker, tmp_path, tiny_teacher_files, profiles, monkeypatch,
                                                capsys):
    """(d) the calibration cache is JSON: a pickle put in its place is ignored and recomputed, never loaded."""
    import hashlib

    from compressor.hardware import load_profile
    from compressor.hardware.predict import LatencyPredictor, cache_dir, calibration_key

    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(cache))
    key = calibration_key(load_profile(str(profiles["quick"])), (1, 8, 8))  # where LatencyPredictor.cached looks
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "latency" / f"faults-quick-{digest}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(out), *RUN,
                 "--profile", str(profiles["quick"])])
    assert code == EXIT_OK, capsys.readouterr().err
    assert not marker.exists()
    assert LatencyPredictor.load(path).coef  # replaced by a real calibration
    read_manifest(out)
