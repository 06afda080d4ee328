"""Fault injection, part 2: corrupt state on --resume.

One small nested run is made once per module, then made resumable-but-unfinished (its
manifest.json deleted, and where a file's consumers would otherwise not need it, the later
stages' outputs too). Each case copies that run folder (and its latency cache), truncates or
garbles ONE file a resume reads, and resumes through ``compressor.cli.main``.

The promise under test, per file, is one of:

- ``error``: exactly one ``compress: error: ...`` line naming the file and saying what to do,
  exit code 2, no traceback, and no manifest written;
- ``recompute``: the damaged file is replaced by a good one, and the run finishes with a valid
  manifest whose sizes, architectures and accuracies are those of the undamaged run; every
  file's recorded sha256 is the file on disk (a garbled export is never served).
"""
from __future__ import annotations

import glob
import hashlib
import json
import random
import shutil
import sqlite3
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from compressor.cli import main
from compressor.errors import EXIT_OK, EXIT_USAGE
from compressor.manifest import MANIFEST_NAME, read_manifest

from .conftest import one_line_error

FAST = ["--image-size", "8", "--epochs", "2", "--calibration-models", "6", "--no-progress"]
ARGS = ["--budget", "10s", "--trials", "3", "--sizes", "1,0.5", *FAST]


# ------------------------------------------------------------------------------ the base run

@dataclass
class Base:
    run: Path
    cache: Path
    teacher: Path
    reference: dict  # the manifest of the undamaged run

    def args(self, out: Path) -> list[str]:
        return ["--teacher", str(self.teacher), "--out", str(out), *ARGS]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_teacher_files) -> Base:
    root = tmp_path_factory.mktemp("corrupt-base")
    cache, run = root / "cache", root / "run"
    b = Base(run=run, cache=cache, teacher=tiny_teacher_files["export"], reference={})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESSOR_CACHE_DIR", str(cache))
        assert main(b.args(run)) == EXIT_OK
    b.reference = read_manifest(run)
    (run / MANIFEST_NAME).unlink()  # resumable but unfinished: --resume must read the state
    return b


# ------------------------------------------------------------------------------ corruptions

def _truncate(p: Path, frac: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * frac)])


def _garble(p: Path, offset: int | None = None, n: int = 64) -> None:
    """Overwrite `n` bytes at `offset` (default: the middle) with fixed pseudo-random bytes."""
    data = bytearray(p.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    rnd = random.Random(offset)
    data[offset:offset + n] = bytes(rnd.randrange(256) for _ in range(n))
    assert bytes(data) != p.read_bytes()
    p.write_bytes(bytes(data))


def _garble_sqlite_page(p: Path) -> None:
    """The b-tree page in the middle of the file, from its header: structural damage."""
    page = sqlite3.connect(p).execute("PRAGMA page_size").fetchone()[0]
    _garble(p, (p.stat().st_size // 2) // page * page)


def _garble_sqlite_record(p: Path) -> None:
    """Bytes inside a stored trial record (a searched architecture's JSON): the file's structure
    is intact, SQLite's own checks pass, only the record's text is garbage."""
    data = bytearray(p.read_bytes())
    # a CNN candidate's widths, or a teacher cut's ratios: which the study holds depends on its draws
    at = next((i for key in (b'"widths"', b'"ratios"') if (i := data.find(key)) > 0), -1)
    assert at > 0
    data[at:at + 8] = b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"
    p.write_bytes(bytes(data))


def _garble_largest_tensor(p: Path) -> None:
    """The middle of the checkpoint's largest tensor record: loads fine unless checksums are checked."""
    with zipfile.ZipFile(p) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = p.read_bytes()
    # the local header's extra field (alignment padding) may differ from the central directory's
    local_extra = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    data_start = info.header_offset + 30 + len(info.filename.encode()) + local_extra
    _garble(p, data_start + info.file_size // 2)


def _garble_onnx_weights(p: Path) -> None:
    """8 bytes inside the largest weight: the file still parses and runs, with wrong numbers."""
    import onnx

    init = max(onnx.load(str(p)).graph.initializer, key=lambda t: len(t.raw_data))
    at = p.read_bytes().find(init.raw_data)
    assert at > 0 and len(init.raw_data) > 16
    _garble(p, at + len(init.raw_data) // 2, n=8)
    onnx.load(str(p))  # still a loadable model: only the hash can tell


def _nan_coefficient(p: Path) -> None:
    data = json.loads(p.read_text())
    data["coef"]["dense_mflops"] = float("nan")  # json writes NaN: valid to Python's reader
    p.write_text(json.dumps(data))


@dataclass(frozen=True)
class Case:
    target: str  # path in the run folder, or "CACHE/..." for the latency cache; "" for none
    how: str
    corrupt: Callable[[Path], None] | None
    expect: str  # "error" or "recompute"
    names: str = ""  # what the error line must name
    drop: tuple[str, ...] = ()  # later stages' outputs removed, so the damaged state must be used
    advice_works: bool = False  # follow the error's advice (delete the file) and resume again
    words: tuple[str, ...] = field(default=("delete it", "start a new run"))


SEL = "models/{selected}"
CASES = {
    "control": Case("", "nothing corrupted", None, "recompute"),
    "study-truncated": Case("search/search.db", "truncated (half)", _truncate, "error", "search.db",
                            drop=("models",), advice_works=True),
    "study-emptied": Case("search/search.db", "truncated (0 bytes)", lambda p: _truncate(p, 0.0), "recompute",
                          drop=("models",)),
    "study-garbled-header": Case("search/search.db", "garbled (SQLite header)", lambda p: _garble(p, 0, 100),
                                 "error", "search.db"),
    "study-garbled-page": Case("search/search.db", "garbled (middle page)", _garble_sqlite_page, "error",
                               "search.db"),
    "study-garbled-record": Case("search/search.db", "garbled (a trial's text)", _garble_sqlite_record, "error",
                                 "search.db"),
    "checkpoint-truncated": Case("family/checkpoint.pt", "truncated (half)", _truncate, "error", "checkpoint.pt",
                                 drop=("models", "family/family.pt")),
    "checkpoint-garbled": Case("family/checkpoint.pt", "garbled (a tensor's bytes)", _garble_largest_tensor,
                               "error", "checkpoint.pt", drop=("models", "family/family.pt"), advice_works=True),
    "family-garbled": Case("family/family.pt", "garbled (middle)", _garble, "recompute"),
    "onnx-truncated": Case(SEL + "/model.onnx", "truncated (half)", _truncate, "recompute"),
    "onnx-garbled-weights": Case(SEL + "/model.onnx", "garbled (8 bytes of a weight; still loads)",
                                 _garble_onnx_weights, "recompute"),
    "export-record-garbled": Case(SEL + "/size.json", "garbled (middle)", _garble, "recompute"),
    "teacher-onnx-truncated": Case("teacher.onnx", "truncated (half)", _truncate, "recompute"),
    "teacher-record-truncated": Case("teacher.json", "truncated (half)", _truncate, "recompute"),
    "teacher-record-garbled": Case("teacher.json", "garbled (middle)", _garble, "recompute"),
    "latency-cache-truncated": Case("CACHE/latency/*.json", "truncated (half)", _truncate, "recompute"),
    "latency-cache-nan": Case("CACHE/latency/*.json", "garbled (valid JSON, a NaN coefficient)", _nan_coefficient,
                              "recompute"),
    "config-truncated": Case("config.json", "truncated (half)", _truncate, "error", "config.json",
                             words=("start a new run",)),
    "config-garbled": Case("config.json", "garbled (middle)", _garble, "error", "config.json",
                           words=("start a new run",)),
}


# ------------------------------------------------------------------------------ checks

def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _same_result(m: dict, ref: dict) -> None:
    """Sizes, architectures and what they score: those of the undamaged run (latency may differ)."""
    def sizes(x):
        return {s["name"]: {k: s.get(k) for k in ("ratio", "params", "macs", "arch", "accuracy",
                                                   "teacher_agreement", "parity_ok")} for s in x["models"]}

    assert sizes(m) == sizes(ref)
    assert m["budget_met"] == ref["budget_met"]
    if m["selected"] != ref["selected"]:  # equally accurate sizes: the faster wins, and latency is re-measured
        acc = {s["name"]: s["accuracy"] for s in m["models"]}
        assert acc[m["selected"]] == acc[ref["selected"]], (m["selected"], ref["selected"])
    for k in ("n_trials", "n_failed", "feasible"):
        assert m["search"][k] == ref["search"][k], k
    assert m["search"]["student"]["arch"] == ref["search"]["student"]["arch"]
    assert m["search"]["ta"]["arch"] == ref["search"]["ta"]["arch"]
    assert [h["val_acc"] for h in m["training"]["history"]] == [h["val_acc"] for h in ref["training"]["history"]]
    for k in ("sha256", "params", "accuracy"):
        assert m["teacher"][k] == ref["teacher"][k], k


def _files_match_manifest(run: Path, m: dict) -> None:
    import onnx

    for s in m["models"]:
        for role, rel in s["files"].items():
            if role in s["sha256"]:
                assert _sha(run / rel) == s["sha256"][role], (s["name"], role)
        onnx.checker.check_model(onnx.load(str(run / s["files"]["onnx"])))


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ the cases

@pytest.mark.parametrize("name", list(CASES))
def test_corrupt_state_on_resume(name, base, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    run, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(base.run, run)
    shutil.copytree(base.cache, cache)
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(cache))
    for rel in case.drop:
        p = run / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if case.corrupt is None:
        target = run / "config.json"  # nothing damaged: any file will do for the checks below
    elif case.target.startswith("CACHE/"):
        (target,) = [Path(p) for p in glob.glob(str(cache / case.target[len("CACHE/"):]))]
    else:
        target = run / case.target.format(selected=base.reference["selected"])
    assert target.is_file(), target
    if case.corrupt is not None:
        case.corrupt(target)
    damaged = target.read_bytes() if case.corrupt is not None else None
    capsys.readouterr()

    code = main([*base.args(run), "--resume"])

    if case.expect == "error":
        err = one_line_error(capsys, code, EXIT_USAGE, case.names, mid_run=True)
        assert any(w in err for w in case.words), err
        assert str(target) in err or target.name in err, err
        assert not (run / MANIFEST_NAME).exists()  # an unfinished run stays unfinished
        if not case.advice_works:
            return
        target.unlink()  # do what the line says, and resume again
        code = main([*base.args(run), "--resume"])
    assert code == EXIT_OK, capsys.readouterr().err
    m = read_manifest(run)  # valid, schema-checked
    _same_result(m, base.reference)
    _files_match_manifest(run, m)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    if damaged is not None and target.exists():
        assert target.read_bytes() != damaged, "the damaged file was kept"
    # the replaced file is good again
    if target.name == "family.pt":
        from compressor.distill.checkpoint import load_checkpoint

        good = load_checkpoint(base.run / "family" / "family.pt")
        assert _same_tensors(load_checkpoint(target)["ta"], good["ta"])
    elif target.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(onnx.load(str(target)))
    elif target.parent.name == "latency":
        from compressor.hardware.predict import LatencyPredictor

        LatencyPredictor.load(target)  # refuses NaN or negative coefficients



@pytest.mark.parametrize("how", ["truncated", "garbled", "nan", "negative"])
def test_damaged_latency_cache_is_refused_by_its_reader(how, base, tmp_path):
    """What makes a damaged cache entry recalibrate (`LatencyPredictor.cached` catches this
    ConfigError): checked here for every kind of damage, end to end above for two of them."""
    from compressor.errors import ConfigError
    from compressor.hardware.predict import LatencyPredictor

    (entry,) = (base.cache / "latency").glob("*.json")
    p = tmp_path / entry.name
    shutil.copy(entry, p)
    LatencyPredictor.load(p)  # the undamaged entry loads
    if how == "truncated":
        _truncate(p)
    elif how == "garbled":
        _garble(p)
    elif how == "nan":
        _nan_coefficient(p)
    else:
        data = json.loads(p.read_text())
        data["coef"]["kernels"] = -1.0
        p.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=p.name):
        LatencyPredictor.load(p)


@pytest.mark.parametrize("how", ["garbled", "truncated"])
def test_damaged_journal_study(how, tmp_path):
    """A study kept in a journal file (``--storage x.journal``): a garbled line is one line naming
    the file; a cut-off last line is dropped by Optuna by design (a crash mid-append), so the trials
    after the cut are simply run again."""
    import optuna

    from compressor.errors import ConfigError
    from compressor.search.study import _reading_study, open_storage

    path = tmp_path / "study.journal"
    store, _ = open_storage(str(path), tmp_path)
    study = optuna.create_study(storage=store, study_name="s", directions=["maximize", "minimize"])
    for i in range(4):
        t = study.ask()
        t.set_user_attr("arch", {"widths": [8 * (i + 1)]})
        study.tell(t, (float(i), 1.0 / (i + 1)))
    lines = path.read_bytes().splitlines(keepends=True)
    mid = len(lines) // 2
    if how == "garbled":
        lines[mid] = b"\xff\xfe garbage " + lines[mid][12:]
        path.write_bytes(b"".join(lines))
        with pytest.raises(ConfigError, match=r"study\.journal .*delete it"), _reading_study(str(path)):
            store, _ = open_storage(str(path), tmp_path)
            optuna.load_study(study_name="s", storage=store).get_trials()
    else:
        path.write_bytes(b"".join(lines[:mid]) + lines[mid][: len(lines[mid]) // 2])
        with _reading_study(str(path)):
            store, _ = open_storage(str(path), tmp_path)
            trials = optuna.load_study(study_name="s", storage=store).get_trials()
        assert len([t for t in trials if t.state.is_finished()]) < 4  # fewer finished: the rest is redone
