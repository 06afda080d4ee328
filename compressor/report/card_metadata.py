"""A model card's YAML front matter, as the Hugging Face Hub reads it.

The Hub (and `huggingface_hub.ModelCard.load`) takes a card's metadata from the
YAML block at its top: licence, library, tags, and a `model-index` holding the
card's evaluation results. Where `huggingface_hub` is installed
(`pip install compressor[hub]`) the block is built with its `ModelCardData` and
`EvalResult` and the card rendered with its `ModelCard`, so the library's own
checks run on every card; without it the same block is written with PyYAML
(`tests/test_viewers.py` holds the two to the same text). Fields are set only
where this run knows them: `datasets` and `base_model` take Hub ids, and a
run's data and teacher are local files or built-ins, not Hub repositories.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["LIBRARY", "TAGS", "UNSTATED_LICENSE", "card_fields", "model_name", "render_card"]

LIBRARY = "onnx"  # what a consumer loads: the size's ONNX file
TAGS = ("onnx", "compression", "knowledge-distillation", "pruning")
# the licence a card states when the run was not told the teacher's (`--license`): the Hub's
# catch-all, since the weights are derived from a teacher this package knows nothing of
UNSTATED_LICENSE = "other"
_DATASETS = {"digits": "scikit-learn digits", "mnist1d": "MNIST-1D"}


def card_fields(manifest: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """The front matter's values: `card` (ModelCardData's fields) and `result` (one EvalResult's)."""
    config, teacher = manifest.get("config", {}), manifest["teacher"]
    data = str(config.get("data") or "")
    image = data == "digits" or len(teacher.get("input_shape") or ()) == 3 or \
        (manifest.get("serving") or {}).get("preprocess", {}).get("input", {}).get("kind") == "image"
    text = (manifest.get("serving") or {}).get("preprocess", {}).get("input", {}).get("kind") == "text"
    task = "image-classification" if image else "text-generation" if text else "other"
    head = (manifest.get("task") or {}).get("headline", "accuracy")
    label = next((m["label"] for m in (manifest.get("task") or {}).get("metrics", []) if m["key"] == head),
                 "top-1 accuracy")
    dataset = data if data in _DATASETS else Path(data).name or "unknown"
    card = {
        "library_name": LIBRARY,
        "license": str(config.get("license") or UNSTATED_LICENSE).lower(),
        "metrics": ["accuracy"],
        "pipeline_tag": task if image or text else None,  # no Hub task fits an arbitrary array
        "tags": list(TAGS),
    }
    result = {
        "task_type": task,
        "dataset_type": dataset,
        "dataset_name": _DATASETS.get(dataset, dataset),
        "dataset_split": "validation",
        "metric_type": "accuracy",
        "metric_value": model["accuracy"],
        "metric_name": label if head != "accuracy" else "top-1 accuracy",
    }
    return {"model_name": model_name(manifest, model), "card": card, "result": result}


def model_name(manifest: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """`<teacher>-<size>`: the name a leaderboard shows for the card's results."""
    teacher = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(manifest["teacher"]["path"])).stem).strip("-")
    return f"{teacher or 'model'}-{model['name']}"


def render_card(fields: Mapping[str, Any], body: str) -> str:
    """The card: front matter, then the Markdown body."""
    try:
        from huggingface_hub import EvalResult, ModelCard, ModelCardData
    except ImportError:
        return f"---\n{_plain_yaml(fields)}\n---\n\n{body}"
    data = ModelCardData(**fields["card"], model_name=fields["model_name"],
                         eval_results=[EvalResult(**fields["result"])])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _plain_yaml(fields: Mapping[str, Any]) -> str:
    """What `ModelCardData.to_yaml` writes for these fields: its key order, no None values,
    the evaluation result folded into `model-index`."""
    r = fields["result"]
    index = [{"name": fields["model_name"], "results": [{
        "task": {"type": r["task_type"]},
        "dataset": {"name": r["dataset_name"], "type": r["dataset_type"], "split": r["dataset_split"]},
        "metrics": [{"type": r["metric_type"], "value": r["metric_value"], "name": r["metric_name"]}],
    }]}]
    data = {k: v for k, v in fields["card"].items() if v is not None}
    return yaml.dump({**data, "model-index": index}, allow_unicode=True, sort_keys=False).strip()
