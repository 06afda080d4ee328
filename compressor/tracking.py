"""A finished run, logged to MLflow (`--mlflow URI`, config key `mlflow`).

One MLflow run stands for the compress run and holds one nested child run per
size, the shape MLflow's own sweeps and autologging take. Children carry the
same metric names (`accuracy`, `latency_p50_ms`, `params`, `meets_budget`), so
MLflow's compare and chart views plot the sizes against each other, as an
accuracy-latency scatter for one; size-prefixed names on a single run could not
be plotted that way. The parent carries the run's configuration as params, the
selected size as the `selected_size` tag and that size's figures under the same
names, so the runs table also ranks compress runs by what each one picked; its
artefacts are the manifest, the report, the model cards and the selected size's
servable files (ONNX, serve.py and what it reads).

Everything is read from the run folder and its manifest, after the manifest is
written: logging can fail (a server down, a bad URI) without touching the
run's results, and `compress report RUN --mlflow URI` logs a finished run later.
The experiment is MLflow's `MLFLOW_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_ID`
when set, else `compress`. MLflow is imported here only, and only when asked for.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from .errors import CompressorError, ConfigError

__all__ = ["EXPERIMENT", "INSTALL", "TrackingError", "log_run", "require_mlflow"]

INSTALL = "pip install 'compressor[mlflow]'"
EXPERIMENT = "compress"
# the selected size's files that serve it on their own (README: "each size folder runs on its own")
_SERVABLE = ("onnx", "onnx_int8", "preprocess", "classes", "serve")
_PARAM_MAX = 6000  # MLflow's limit on a param value's length
_PARAM_SKIP = ("mlflow",)  # the URI itself: it may carry credentials, and says nothing about the run


class TrackingError(CompressorError):
    """The tracking server could not take the run (the run folder is complete regardless)."""


def require_mlflow(uri: str) -> None:
    """The URI is usable in form and MLflow is installed; checked with the options, before any work."""
    if not uri.strip():
        raise ConfigError("mlflow must be a tracking URI, e.g. --mlflow sqlite:///mlflow.db or "
                          "--mlflow http://localhost:5000")
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"--mlflow needs MLflow, which is not installed: {INSTALL}")


def log_run(uri: str, run_dir: Path | str, manifest: Mapping[str, Any]) -> dict[str, str]:
    """Log a finished run; returns {uri, experiment, run_id} of the parent MLflow run.

    Any failure is a `TrackingError` naming the URI; a parent run already created is
    then marked FAILED, so the MLflow UI does not show it running forever."""
    from .manifest import normalize_paths

    require_mlflow(uri)
    run_dir = Path(run_dir)
    manifest = normalize_paths(run_dir, manifest)
    try:
        from mlflow.tracking import MlflowClient

        if not os.environ.get("MLFLOW_LOGGING_LEVEL"):  # MLflow's INFO lines (its database set-up) would
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # break the run's one-line-per-step log
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment(client)
        parent = client.create_run(experiment_id, run_name=run_dir.name, tags=_run_tags(run_dir, manifest)).info.run_id
    except Exception as e:  # noqa: BLE001 - MLflow and the HTTP/DB layers below it raise many kinds
        raise TrackingError(f"cannot log to MLflow at {uri}: {_why(e)}") from e
    try:
        _log_parent(client, parent, run_dir, manifest)
        for model in manifest["models"]:
            _log_size(client, experiment_id, parent, run_dir, manifest, model)
        client.set_terminated(parent, "FINISHED")
        name = client.get_experiment(experiment_id).name
    except Exception as e:  # noqa: BLE001
        try:
            client.set_terminated(parent, "FAILED")
        except Exception:  # noqa: BLE001, S110 - the first failure is the one worth reporting
            pass
        raise TrackingError(f"logging to MLflow at {uri} stopped part way (MLflow run {parent}, marked FAILED): "
                            f"{_why(e)}") from e
    return {"uri": uri, "experiment": name, "run_id": parent}


def _experiment(client: Any) -> str:
    """MLflow's own environment variables choose the experiment, as for `mlflow.start_run`."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another run created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _run_tags(run_dir: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    budget = manifest["budget"]
    return {"selected_size": manifest.get("selected") or "none", "budget": f"{budget['text']} {budget['stat']}",
            "profile": budget["profile"], "teacher": str(manifest["teacher"]["path"]),
            "run_dir": str(run_dir.resolve()), "compressor_version": str(manifest.get("compressor_version", ""))}


def _log_parent(client: Any, run_id: str, run_dir: Path, manifest: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    budget, teacher = manifest["budget"], manifest["teacher"]
    metrics = {"budget_met": float(bool(manifest.get("budget_met"))), "budget_ms": budget["ms"],
               "teacher_accuracy": teacher.get("accuracy"), "teacher_params": teacher.get("params"),
               f"teacher_latency_{budget['stat']}_ms": _ms(teacher, budget["profile"], budget["stat"]),
               "wall_seconds": manifest.get("seconds")}
    selected = next((m for m in manifest["models"] if m["name"] == manifest.get("selected")), None)
    if selected is not None:
        metrics.update(_size_metrics(manifest, selected))
    params = [Param(k, _param_value(v)) for k, v in sorted(manifest.get("config", {}).items()) if k not in _PARAM_SKIP]
    client.log_batch(run_id, metrics=_metrics(metrics), params=params)
    for name in ("manifest.json", "report.md", "report.html"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    for model in manifest["models"]:
        card = run_dir / model["files"].get("model_card", "")
        if card.is_file():
            client.log_artifact(run_id, str(card), "model_cards")
    if selected is not None:
        for role in _SERVABLE:
            path = run_dir / selected["files"].get(role, "")
            if role in selected["files"] and path.is_file():
                client.log_artifact(run_id, str(path), f"models/{selected['name']}")


def _log_size(client: Any, experiment_id: str, parent: str, run_dir: Path, manifest: Mapping[str, Any],
              model: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    from .report._view import mean_ratio

    selected = model["name"] == manifest.get("selected")
    child = client.create_run(experiment_id, run_name=f"{run_dir.name}/{model['name']}",
                              tags={"mlflow.parentRunId": parent, "size": model["name"],
                                    "selected": str(selected).lower()}).info.run_id
    params = [Param("size", model["name"]), Param("width_ratio", _param_value(mean_ratio(model["ratio"])))]
    client.log_batch(child, metrics=_metrics(_size_metrics(manifest, model)), params=params)
    card = run_dir / model["files"].get("model_card", "")
    if card.is_file():
        client.log_artifact(child, str(card))
    client.set_terminated(child, "FINISHED")


def _size_metrics(manifest: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """One size's figures; latency unprefixed on the budget's profile, `<profile>/...` on the others."""
    budget = manifest["budget"]
    out: dict[str, Any] = {"accuracy": model["accuracy"], "teacher_agreement": model.get("teacher_agreement"),
                           "params": model["params"], "macs": model.get("macs"),
                           "meets_budget": float(bool(model["meets_budget"]))}
    for profile, report in model.get("latency", {}).items():
        prefix = "" if profile == budget["profile"] else f"{_key(profile)}/"
        for stat in ("p50", "p90", "p99"):
            out[f"{prefix}latency_{stat}_ms"] = report.get(f"{stat}_ms")
        out[f"{prefix}latency_measured"] = float(bool(report.get("measured")))
    if model.get("int8"):
        out["int8_accuracy"] = model["int8"].get("accuracy")
    return out


def _metrics(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]  # no None, no NaN


def _ms(entry: Mapping[str, Any], profile: str, stat: str) -> float | None:
    report = entry.get("latency", {}).get(profile) or {}
    return report.get(f"{stat}_ms")


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _PARAM_MAX else text[:_PARAM_MAX - 3] + "..."


def _key(name: str) -> str:
    """A profile name as MLflow allows in a metric key (letters, digits, _ - . space / :)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]+", "_", name)


def _why(e: BaseException) -> str:
    from .files import first_line

    text = first_line(e) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
