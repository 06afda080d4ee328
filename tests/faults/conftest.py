"""Fixtures for the fault-injection suite: a precious earlier run to guard, and hostile files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

# The flags every run in this suite uses: small enough for two shared cores.
FAST = ["--image-size", "8", "--epochs", "1", "--calibration-models", "6", "--no-progress"]
RUN = ["--method", "skeleton", "--sizes", "0.5", "--trials", "2", "--budget", "10s", *FAST]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Latency calibrations go to a cache of this test session, never the user's."""
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "faults-cache"))


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every path under `folder` with its sha256 (files) and mtime: what 'untouched' means."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[str(p.relative_to(folder))] = (digest, p.stat().st_mtime_ns)
    out["."] = ("dir", folder.stat().st_mtime_ns)
    return out


@pytest.fixture
def precious_run(tmp_path):
    """An earlier, finished run folder that a failing run must not touch."""
    run = tmp_path / "earlier-run"
    (run / "models" / "w0.50").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"precious": True}))
    (run / "report.md").write_text("# the earlier report\n")
    (run / "models" / "w0.50" / "model.onnx").write_bytes(b"\x08\x07earlier model bytes")
    return run


def one_line_error(capsys, code: int, expected_code: int, *matches: str, mid_run: bool = False) -> str:
    """The product's promise for bad input: one `compress: error:` line naming it, no traceback.

    Refused at intake, that line is all of stderr. `mid_run`: the input is only read later in the
    run (a checkpoint on --resume), so the run's own progress lines may come first; the error is
    still exactly one line, and the last."""
    full = capsys.readouterr().err.strip()
    assert code == expected_code, full
    assert "Traceback" not in full and "internal error" not in full, full
    lines = full.splitlines()
    assert len(lines) == 1 or mid_run, full
    assert [ln for ln in lines if "error" in ln.lower()] == lines[-1:], full
    err = lines[-1]
    assert err.startswith("compress: error:"), full
    for m in matches:
        assert m.lower() in err.lower(), f"{m!r} not in {err!r}"
    print(f"[{expected_code}] {err}")  # shown by `pytest -rA`: the line the user sees
    return err
