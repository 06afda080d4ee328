"""The ecosystem's viewers on one real run: optuna-dashboard on its study, MLflow, Hugging Face cards."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import EXIT_OK, EXIT_USAGE
from compressor.manifest import example_manifest, read_manifest
from compressor.report import render_model_card

QUICK = ["--image-size", "8", "--epochs", "1", "--calibration-models", "6", "--budget", "10s", "--trials", "2",
         "--sizes", "1,0.5", "--no-progress"]
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def viewed(tiny_teacher_files, predicted_profile, tmp_path_factory):
    """One nested run in <tmp>/runs/demo, logged to a local MLflow (SQLite: this MLflow refuses its file
    store unless MLFLOW_ALLOW_FILE_STORE is set), working directory <tmp> as a user's would be."""
    home = tmp_path_factory.mktemp("viewers")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)  # MLflow's SQLite store puts artefacts in ./mlruns
        mp.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
            mp.delenv(var, raising=False)
        code, stdout, stderr = _run(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", "runs/demo",
                                     "--profile", predicted_profile, "--license", "apache-2.0", "--json", *QUICK,
                                     *(["--mlflow", uri] if HAS_MLFLOW else [])])
    assert code == EXIT_OK, stderr
    return {"home": home, "run": home / "runs" / "demo", "uri": uri, "summary": json.loads(stdout), "stderr": stderr}


# ---------------------------------------------------------------------------- optuna-dashboard

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, deadline: float, proc: subprocess.Popen) -> dict:
    """Poll until the server answers (it takes seconds to start on a busy machine)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            if proc.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited with {proc.returncode}: "
                                     f"{proc.stdout.read() if proc.stdout else ''}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
def test_optuna_dashboard_opens_the_runs_study(viewed):
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    if not dashboard.is_file():
        pytest.skip("optuna-dashboard is not installed (pip install 'compressor[dashboard]')")
    search = read_manifest(viewed["run"])["search"]
    port = _free_port()
    # the README's command, from the folder holding runs/
    proc = subprocess.Popen([str(dashboard), "sqlite:///runs/demo/search/search.db", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=viewed["home"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        studies = _get_json(f"http://127.0.0.1:{port}/api/studies", deadline, proc)["study_summaries"]
        assert [s["study_name"] for s in studies] == [search["study_name"]]
        study = _get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", deadline, proc)
        assert study["name"] == search["study_name"] and study["directions"] == ["maximize", "minimize"]
        complete = [t for t in study["trials"] if t["state"] == "Complete"]
        assert len(complete) == search["n_trials"] - search["n_failed"] > 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


# ---------------------------------------------------------------------------- MLflow

def _children(client, run):
    return {r.data.tags["size"]: r for r in client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="MLflow is not installed (pip install 'compressor[mlflow]')")
def test_mlflow_holds_the_run_its_sizes_and_artefacts(viewed):
    from mlflow.tracking import MlflowClient

    m = read_manifest(viewed["run"])
    logged = viewed["summary"]["mlflow"]
    assert logged["experiment"] == "compress" and "logged to MLflow" in viewed["stderr"]
    client = MlflowClient(tracking_uri=viewed["uri"])
    run = client.get_run(logged["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    params = run.data.params
    assert params["budget"] == "10s" and params["epochs"] == "1" and params["sizes"] == "[1.0, 0.5]"
    assert params["license"] == "apache-2.0" and "mlflow" not in params  # the URI is not a setting of the run
    assert run.data.tags["selected_size"] == m["selected"]
    profile, selected = m["budget"]["profile"], next(x for x in m["models"] if x["name"] == m["selected"])
    assert run.data.metrics["accuracy"] == selected["accuracy"] and run.data.metrics["budget_met"] == 1.0

    children = _children(client, run)
    assert set(children) == {x["name"] for x in m["models"]}
    for model in m["models"]:
        child = children[model["name"]]
        assert child.info.status == "FINISHED"
        assert child.data.tags["selected"] == str(model["name"] == m["selected"]).lower()
        got = child.data.metrics
        assert got["accuracy"] == model["accuracy"] and got["params"] == model["params"]
        assert got["latency_p50_ms"] == model["latency"][profile]["p50_ms"]
        assert got["meets_budget"] == float(model["meets_budget"])
        assert _artifacts(client, child.info.run_id) == {Path(model["files"]["model_card"]).name}

    files = _artifacts(client, run.info.run_id)
    cards = {f"model_cards/{Path(x['files']['model_card']).name}" for x in m["models"]}
    assert {"manifest.json", "report.md", "report.html", f"models/{m['selected']}/model.onnx"} | cards <= files
    assert not any(f.endswith(".ts.pt") for f in files)  # the ONNX serves; TorchScript stays in the run folder
    local = client.download_artifacts(run.info.run_id, "manifest.json", str(viewed["home"]))
    assert json.loads(Path(local).read_text()) == m


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="MLflow is not installed (pip install 'compressor[mlflow]')")
def test_mlflow_failing_keeps_the_run_and_compress_report_logs_it_later(viewed, predicted_profile, tiny_teacher_files,
                                                                         monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    run = viewed["home"] / "runs" / "again"
    shutil.copytree(viewed["run"], run)
    monkeypatch.chdir(viewed["home"])
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "later")
    before = read_manifest(run)
    bad = "sqlite:////proc/no-such-folder/mlflow.db"  # the store cannot be opened: MLflow fails at the end
    code, stdout, stderr = _run(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(run), "--resume",
                                 "--profile", predicted_profile, "--license", "apache-2.0", "--json", *QUICK,
                                 "--mlflow", bad])
    assert code == EXIT_OK  # the budget's answer, not MLflow's
    assert f"log them later with: compress report {run} --mlflow {bad}" in caplog.text  # an ERROR line
    assert json.loads(stdout)["mlflow"]["error"].startswith(f"cannot log to MLflow at {bad}")
    after = read_manifest(run)
    assert after["models"] == before["models"] and after["selected"] == before["selected"]

    code, _, stderr = _run(["report", str(run), "--mlflow", viewed["uri"]])
    assert code == EXIT_OK, stderr
    client = MlflowClient(tracking_uri=viewed["uri"])
    [logged] = client.search_runs([client.get_experiment_by_name("later").experiment_id],
                                  filter_string="attributes.run_name = 'again'")
    assert logged.data.tags["selected_size"] == after["selected"] and logged.info.status == "FINISHED"
    assert len(_children(client, logged)) == len(after["models"])


def test_mlflow_not_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "run"
    for argv in (["--teacher", "t.pt", "--budget", "1ms", "--out", str(out), "--mlflow", "sqlite:///m.db"],
                 ["report", str(tmp_path), "--mlflow", "sqlite:///m.db"]):
        assert main(argv) == EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert err == "compress: error: --mlflow needs MLflow, which is not installed: pip install 'compressor[mlflow]'"
    assert not out.exists()  # refused with the options, before the teacher is even looked for


def test_a_bad_licence_id_is_refused_before_work(tmp_path, capsys):
    assert main(["--teacher", "t.pt", "--budget", "1ms", "--out", str(tmp_path / "run"),
                 "--license", "see LICENSE!"]) == EXIT_USAGE
    assert "license must be a licence id such as apache-2.0" in capsys.readouterr().err


# ---------------------------------------------------------------------------- Hugging Face model cards

@pytest.mark.slow
def test_each_card_is_a_hugging_face_model_card(viewed):
    hub = pytest.importorskip("huggingface_hub")
    m = read_manifest(viewed["run"])
    for model in m["models"]:
        card = hub.ModelCard.load(viewed["run"] / model["files"]["model_card"])
        data = card.data
        assert data.license == "apache-2.0" and data.library_name == "onnx"
        assert {"onnx", "compression", "knowledge-distillation"} <= set(data.tags)
        assert data.pipeline_tag == "image-classification" and data.metrics == ["accuracy"]
        assert data.model_name == f"{Path(m['teacher']['path']).stem}-{model['name']}"
        [result] = data.eval_results
        assert (result.metric_type, result.metric_value) == ("accuracy", model["accuracy"])
        assert (result.task_type, result.dataset_type, result.dataset_split) == \
            ("image-classification", "digits", "validation")
        assert card.text.lstrip().startswith(f"# Model card: {model['name']}")
        assert "datasets" not in data.to_dict() and "base_model" not in data.to_dict()  # no Hub ids known


def test_front_matter_without_huggingface_hub_is_the_same(monkeypatch):
    """The plain-YAML fallback writes what huggingface_hub writes, on image and non-image data alike."""
    pytest.importorskip("huggingface_hub")
    image = example_manifest()
    array = example_manifest()
    array["config"] = {**array["config"], "data": "/data/sensors.npz", "license": "MIT"}
    array["teacher"]["input_shape"] = [40]
    with_hub = {(i, m["name"]): render_model_card(man, m["name"]) for i, man in enumerate((image, array))
                for m in man["models"]}
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    for (i, name), text in with_hub.items():
        assert render_model_card((image, array)[i], name) == text
    front = with_hub[(1, "s50")].split("---\n")[1]
    assert "license: mit\n" in front and "type: sensors.npz\n" in front and "pipeline_tag" not in front
    assert "    - type: accuracy\n      value: 0.972\n" in with_hub[(0, "s50")]
