"""How the CLI speaks: --json on stdout, progress lines when stderr is not a terminal, -q, report."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import EXIT_OK, EXIT_USAGE
from compressor.manifest import read_manifest

QUICK = ["--image-size", "8", "--epochs", "2", "--calibration-models", "6", "--budget", "10s", "--trials", "2",
         "--sizes", "1,0.5"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def json_run(tiny_teacher_files, predicted_profile, tmp_path_factory):
    """One nested run with --json and progress on, stderr captured (not a terminal)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("cli-json") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(out),
                     "--profile", predicted_profile,
                     "--json", *QUICK])
    return code, out, stdout.getvalue(), stderr.getvalue()


def test_json_prints_one_machine_readable_summary_on_stdout(json_run, predicted_profile):
    profile = Path(predicted_profile).stem
    code, out, stdout, _ = json_run
    assert code == EXIT_OK
    summary = json.loads(stdout)  # stdout holds the JSON and nothing else
    m = read_manifest(out)
    assert summary["run_dir"] == str(out) and summary["exit_code"] == 0 and summary["budget_met"]
    assert summary["selected"]["name"] == m["selected"]
    assert [s["name"] for s in summary["sizes"]] == [x["name"] for x in m["models"]]
    sel = next(x for x in m["models"] if x["name"] == m["selected"])
    assert summary["selected"]["accuracy"] == sel["accuracy"]
    assert summary["selected"]["latency_ms"] == sel["latency"][profile]["p50_ms"]
    assert summary["selected"]["onnx"].endswith("model.onnx") and summary["budget"]["profile"] == profile


def test_a_piped_run_prints_a_line_per_stage_trial_epoch_and_size(json_run):
    _, out, _, stderr = json_run
    lines = stderr.splitlines()
    stamped = [ln for ln in lines if re.match(r"\[\d+:\d\d\] ", ln)]
    kinds = [ln.split()[1] for ln in stamped]
    assert kinds.count("trial") == 2 and kinds.count("epoch") == 2 and kinds.count("export") == 2
    stages = [ln.split()[2].rstrip(":") for ln in stamped if ln.split()[1] == "stage"]
    assert stages == ["intake", "calibration", "teacher", "anchor", "search", "premeasure", "distill", "export",
                      "select", "tensorrt", "seal"]
    assert any("(2/2)" in ln for ln in stamped if " epoch " in ln)
    assert not any("\x1b[" in ln for ln in lines)  # no terminal codes in a log file


def test_quiet_prints_nothing_but_the_json(tiny_teacher_files, predicted_profile, tmp_path, capsys):
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(tmp_path / "run"),
                 "--profile", predicted_profile, "-q", "--json", "--method", "skeleton", *QUICK])
    captured = capsys.readouterr()
    assert code == EXIT_OK and captured.err == ""
    assert json.loads(captured.out)["selected"]


def test_json_on_bad_input_still_gives_one_stderr_line_and_json_on_stdout(tiny_teacher_files, tmp_path, capsys):
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(tmp_path / "run"),
                 "--budget", "fast", "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE and len(captured.err.strip().splitlines()) == 1
    assert json.loads(captured.out) == {"error": captured.err.strip().removeprefix("compress: error: "),
                                        "exit_code": EXIT_USAGE}


def test_report_renders_a_finished_run_again(json_run, capsys):
    _, out, _, _ = json_run
    (out / "report.md").unlink()
    html = (out / "report.html").read_text()
    assert main(["report", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out.split()
    assert str(out / "report.md") in printed and (out / "report.md").is_file()
    assert (out / "report.html").read_text() == html  # the same manifest renders the same report


def test_report_on_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("compress: error:") and "manifest" in err and len(err.splitlines()) == 1


def test_help_names_the_environment_variables(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for var in ("COMPRESSOR_CACHE_DIR", "COMPRESSOR_PROFILES_DIR", "-q, --quiet", "--json", "compress report"):
        assert var in text
