"""One model card per servable size (`model_card_<name>.md`).

A card travels with its ONNX file to whoever serves it, often without the rest
of the run folder, so it restates what a consumer must know on its own: where
the model came from, the figures it was picked on and whether each was measured
or predicted, what it is for, and where it falls short. Its YAML front matter
(`card_metadata`) makes it a Hugging Face model card as well: licence, library,
tags and the accuracy as a `model-index` result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ._view import (
    PREDICTED,
    files_of,
    fmt_count,
    fmt_diff,
    fmt_latency,
    fmt_metric,
    fmt_pct,
    fmt_ratio,
    headline_label,
    is_measured,
    latency_ms,
    link,
    mean_ratio,
    metric_value,
    model_card_filename,
    task_metrics,
)
from .card_metadata import UNSTATED_LICENSE, card_fields, render_card

__all__ = ["model_card_filename", "render_model_card", "write_model_card"]

_METHODS = {
    "nested": ("nested (Matryoshka) knowledge distillation: one student network is trained from the teacher's "
               "outputs so that each width prefix works on its own; this size keeps the first {pct} of the "
               "channels of every coupled channel group (channels ordered by importance) and was then cut "
               "physically into a smaller dense network with Torch-Pruning"),
}


def render_model_card(manifest: Mapping[str, Any], name: str) -> str:
    """Markdown text of the card for size `name`, front matter first."""
    model = next((m for m in manifest["models"] if m["name"] == name), None)
    if model is None:
        raise ConfigError(f"no size {name!r} in the manifest; sizes: {[m['name'] for m in manifest['models']]}")
    teacher, budget, config = manifest["teacher"], manifest["budget"], manifest.get("config", {})
    ratio, ratio_text = mean_ratio(model["ratio"]) or 0.0, fmt_ratio(model["ratio"], long=True)
    method = str(config.get("method", "nested"))
    how = _METHODS.get(method, f"method {method!r} (see the run's resolved configuration)").format(
        pct=f"{100 * ratio:.3g}%")
    if (manifest.get("task") or {}).get("method"):  # the task says how its sizes are made (language models)
        arch = model.get("arch") or {}
        how = str(manifest["task"]["method"]).format(pct=f"{100 * ratio:.3g}%", **{
            k: arch.get(k, "?") for k in ("layers", "heads", "ffn")})
    data = config.get("data")

    lines = [
        f"# Model card: {name}",
        "",
        "## What it is",
        "",
        f"A compressed copy of the teacher `{teacher['path']}` at width ratio {ratio_text} "
        f"({fmt_count(model['params'])} parameters, {fmt_count(model['macs'])} MACs per sample; the teacher has "
        f"{fmt_count(teacher['params'])} and {fmt_count(teacher['macs'])}). It maps one input to "
        f"{(manifest.get('serving') or {}).get('output', 'class logits')}, like the teacher, and is served as a "
        "single ONNX file with a dynamic batch dimension.",
        "",
        "## How it was made",
        "",
        f"- Teacher: `{teacher['path']}` ({teacher['format']}), sha256 `{teacher['sha256']}`, "
        f"{headline_label(manifest).lower()} {fmt_pct(teacher.get('accuracy'))}.",
        f"- Method: {how}.",
        f"- Width ratio: {ratio_text}.",
    ]
    if data is not None:
        lines.append(f"- Data: `{data if isinstance(data, str) else json.dumps(data)}` "
                     "(accuracy below is on its validation split).")
    lines += [
        f"- Exported to ONNX and checked against PyTorch on validation inputs: max abs diff "
        f"{fmt_diff(model['onnx_max_abs_diff'])} ({'within tolerance' if model['parity_ok'] else 'FLAGGED'}).",
        f"- Produced by compressor {manifest['compressor_version']} on {manifest['created']}.",
        f"- Licence: {_licence(config)}.",
        "",
        "## Measured figures",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {m['label'].lower()} (validation) | {fmt_metric(metric_value(model, m), m)} |"
          for m in task_metrics(manifest)],
        f"| agreement with the teacher's top-1 | {fmt_pct(model['teacher_agreement'])} |",
        f"| meets the run's budget ({budget['text']} {budget['stat']} on {budget['profile']}) | "
        f"{'yes' if model['meets_budget'] else 'no'} |",
        "",
        "| profile | p50 | p90 | p99 | batch | samples | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for profile, r in model["latency"].items():
        lines.append(f"| {profile} | {r['p50_ms']:.3g} ms | {r['p90_ms']:.3g} ms | {r['p99_ms']:.3g} ms | "
                     f"{r.get('batch_size', 1)} | {r['samples']} | "
                     f"{'measured' if r['measured'] else PREDICTED} |")
    int8 = model.get("int8")
    if int8:
        lines += ["", f"INT8 copy (`{int8['file']}`): accuracy {fmt_pct(int8['accuracy'])} "
                      f"(fp32 {fmt_pct(model['accuracy'])}); latency "
                  + ", ".join(f"{p} {fmt_latency(r)}" for p, r in int8["latency"].items()) + "."]

    lines += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    for role, path, digest in files_of(model):
        if role != "model_card":
            lines.append(f"| [{path}]({link(path)}) ({role}) | {f'`{digest}`' if digest else '—'} |")

    lines += [
        "",
        "## Intended use",
        "",
        "Serving the teacher's task where the teacher is too slow: on inputs from the same distribution as the "
        f"training data, under a latency budget on one of the profiles above. To choose a size at serving time, "
        f"use `compress pick <run folder> --budget {budget['text']} --profile {budget['profile']}` or "
        "`compressor.pick.load_session`.",
        "",
        "## Limitations",
        "",
    ]
    lines += [f"- {item}" for item in _limitations(manifest, model)]
    return render_card(card_fields(manifest, model), "\n".join(lines) + "\n")


def _licence(config: Mapping[str, Any]) -> str:
    if config.get("license"):
        return f"`{config['license']}`, as the run was told (`--license`); the weights derive from the teacher's"
    return (f"not stated (`{UNSTATED_LICENSE}` in the front matter): the weights derive from the teacher's, so "
            "its licence applies; `--license` records it")


def _limitations(manifest: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    out = [
        f"Accuracy was measured on a validation split only ({fmt_pct(model['accuracy'])}); expect lower "
        "accuracy on data unlike the training data. The model inherits the teacher's errors and biases, and "
        f"disagrees with the teacher on {fmt_pct(1 - model['teacher_agreement'])} of validation inputs.",
    ]
    predicted = [p for p, r in model["latency"].items() if not is_measured(r)]
    measured = [p for p, r in model["latency"].items() if is_measured(r)]
    if measured:
        out.append(f"Measured latencies ({', '.join(measured)}) hold for that profile's batch size, thread count "
                   "and runtime; other hardware or settings will differ.")
    if predicted:
        out.append(f"Latencies on {', '.join(predicted)} are {PREDICTED} by a model of the hardware, not "
                   "measured: measure on the device before relying on them.")
    if not model["parity_ok"]:
        out.append("The ONNX file's outputs differ from PyTorch beyond tolerance "
                   f"({'; '.join(model.get('notes', [])) or 'see the report'}): validate before serving.")
    if not model["meets_budget"]:
        ms = latency_ms(model["latency"].get(manifest["budget"]["profile"]))
        got = f" (takes {ms:.3g} ms)" if ms is not None else ""
        out.append(f"Does not meet the run's budget of {manifest['budget']['text']} on "
                   f"{manifest['budget']['profile']}{got}.")
    if model.get("int8"):
        drop = model["accuracy"] - model["int8"]["accuracy"]
        out.append(f"The INT8 copy loses {100 * drop:.1f} accuracy points against fp32; it is an option, "
                   "not a replacement.")
    return out


def write_model_card(run_dir: Path, manifest: Mapping[str, Any], name: str) -> Path:
    from ..files import write_text

    path = Path(run_dir) / model_card_filename(name)
    write_text(path, render_model_card(manifest, name))
    return path
