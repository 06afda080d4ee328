"""Fault injection: the output disk fills up mid-run.

A small tmpfs is mounted for the test (the suite runs as root here; elsewhere the cases
skip and say why). A complete run on it first measures how much a run writes; then, for
several fill levels, the disk is filled with ballast until only part of that is free, and
the run must end in one ``compress: error:`` line that says the disk is full, exit 2, with
an earlier finished run on the same disk untouched. Removing the ballast and resuming must
finish the run with a valid manifest whose every file has the recorded hash.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import EXIT_OK, EXIT_USAGE
from compressor.files import sha256_file
from compressor.manifest import read_manifest

from .conftest import RUN, one_line_error, snapshot

DISK_MB = 24


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    mnt = tmp_path_factory.mktemp("small-disk")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here to make a small tmpfs for the full-disk cases")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a {DISK_MB} MB tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "the full-disk cases need one (root, or a container allowed to mount)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _used(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _fill(disk: Path, leave: int) -> Path:
    """Ballast that leaves about `leave` bytes free on `disk`."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return ballast


@pytest.fixture(scope="module")
def full_run(disk, tiny_teacher_files, predicted_profile):
    """A complete run on the small disk: an earlier result to protect, and how much a run writes."""
    args = ["--teacher", str(tiny_teacher_files["torchscript"]), *RUN, "--profile", predicted_profile]
    earlier = disk / "earlier"
    assert main([*args, "--out", str(earlier)]) == EXIT_OK
    return args, earlier, _used(earlier)


@pytest.mark.parametrize("left", [0.0, 0.1, 0.3, 0.8])
def test_a_full_disk_ends_in_one_line_and_resume_finishes_once_there_is_room(left, disk, full_run, capsys):
    args, earlier, footprint = full_run
    out = disk / f"run-{left}"
    before = snapshot(earlier)
    ballast = _fill(disk, int(left * footprint))
    try:
        capsys.readouterr()
        code = main([*args, "--out", str(out)])
        err = one_line_error(capsys, code, EXIT_USAGE, "no space left", mid_run=True)
        assert "--resume" in err
        print(f"[full disk, {left:.0%} of a run free] {err}")
        assert not (out / "manifest.json").exists()
    finally:
        ballast.unlink()
    assert snapshot(earlier) == before  # the earlier run on the same disk is untouched
    resume_args = [*args, "--out", str(out)] + (["--resume"] if out.exists() and any(out.iterdir()) else [])
    assert main(resume_args) == EXIT_OK, capsys.readouterr().err
    m = read_manifest(out)
    for size in m["models"]:
        for role, path in size["files"].items():
            if role in size["sha256"]:
                assert sha256_file(out / path) == size["sha256"][role], (size["name"], role)
    assert not list(out.rglob(".tmp-*"))
    shutil.rmtree(out)
    assert os.path.ismount(disk)


def test_a_full_disk_during_the_search_keeps_the_study_and_says_so(disk, full_run, capsys):
    """SQLite's 'database or disk is full' is a full disk, not a damaged study to delete."""
    args, _, _ = full_run
    nested = [a if a != "skeleton" else "nested" for a in args]
    out = disk / "nested"
    ballast = _fill(disk, 100_000)  # room for the settings and the teacher, not for the whole study
    try:
        capsys.readouterr()
        err = one_line_error(capsys, main([*nested, "--out", str(out)]), EXIT_USAGE, "search.db", "no space left",
                             mid_run=True)
        assert "damaged" not in err and "delete" not in err and "--resume" in err
        print(f"[full disk, during the search] {err}")
    finally:
        ballast.unlink()
    assert main([*nested, "--out", str(out), "--resume"]) == EXIT_OK, capsys.readouterr().err
    assert read_manifest(out)["search"]["n_trials"] == 2
    shutil.rmtree(out)
