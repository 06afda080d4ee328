"""Manifest -> display values, shared by the Markdown, HTML and model-card writers.

Formatting lives here once so the three outputs never disagree about a figure
(e.g. one printing a predicted latency without saying it was predicted).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

PREDICTED = "predicted"


def profiles(manifest: Mapping[str, Any]) -> list[str]:
    """Every profile with a latency figure: the budget's profile first, then first-seen order."""
    seen: dict[str, None] = {manifest["budget"]["profile"]: None}
    for entry in (manifest["teacher"], *manifest["models"]):
        for name in entry.get("latency", {}):
            seen.setdefault(name, None)
    return [p for p in seen if _has_latency(manifest, p)]


def _has_latency(manifest: Mapping[str, Any], profile: str) -> bool:
    return any(profile in e.get("latency", {}) for e in (manifest["teacher"], *manifest["models"]))


def latency_ms(report: Mapping[str, Any] | None) -> float | None:
    """The figure a budget is compared with: the report's own statistic."""
    if not report:
        return None
    value = report.get(f"{report.get('stat', 'p50')}_ms")
    return float(value) if isinstance(value, (int, float)) else None


def is_measured(report: Mapping[str, Any] | None) -> bool:
    return bool(report and report.get("measured"))


def fmt_latency(report: Mapping[str, Any] | None) -> str:
    ms = latency_ms(report)
    if ms is None:
        return "—"
    text = f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"
    return text if is_measured(report) else f"{text} ({PREDICTED})"


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


_ACCURACY = {"key": "accuracy", "label": "Accuracy", "percent": True}


def task_metrics(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The metrics the run's task reports (`manifest["task"]`), headline first; a run without a
    task block (older manifests, classification) reports accuracy alone."""
    task = manifest.get("task") or {}
    metrics = list(task.get("metrics") or [_ACCURACY])
    head = task.get("headline", "accuracy")
    return sorted(metrics, key=lambda m: m["key"] != head)


def headline_label(manifest: Mapping[str, Any]) -> str:
    return str(task_metrics(manifest)[0]["label"])


def metric_value(entry: Mapping[str, Any], metric: Mapping[str, Any]) -> float | None:
    """A size's (or the teacher's) value of `metric`: its `metrics` entry, or `accuracy`."""
    values = entry.get("metrics") or {}
    value = values.get(metric["key"], entry.get("accuracy") if metric["key"] == "accuracy" else None)
    return float(value) if isinstance(value, (int, float)) else None


def fmt_metric(value: float | None, metric: Mapping[str, Any]) -> str:
    if value is None:
        return "—"
    return fmt_pct(value) if metric.get("percent", True) else f"{value:.3f}"


def fmt_count(n: int | None) -> str:
    """1_234_567 -> '1.23M' (params and MACs span five orders of magnitude)."""
    if n is None:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def fmt_diff(diff: float | None) -> str:
    return "could not run" if diff is None else f"{diff:.1e}"


def mean_ratio(r: float | Mapping[str, float] | None) -> float | None:
    """A size's width ratio: one number, or the mean of per-group ratios."""
    if isinstance(r, Mapping):
        values = [float(v) for v in r.values() if isinstance(v, (int, float))]
        return sum(values) / len(values) if values else None
    return None if r is None else float(r)


def fmt_ratio(r: float | Mapping[str, float] | None, *, long: bool = False) -> str:
    """'0.5'; per-group ratios as their mean, marked so (with the group count when `long`)."""
    mean = mean_ratio(r)
    if mean is None:
        return "—"
    if not isinstance(r, Mapping):
        return f"{mean:g}"
    return f"{mean:.3g} (mean of {len(r)} channel groups)" if long else f"{mean:.3g} (mean)"


def stat_of(manifest: Mapping[str, Any], profile: str) -> str:
    for entry in (*manifest["models"], manifest["teacher"]):
        report = entry.get("latency", {}).get(profile)
        if report:
            return str(report.get("stat", "p50"))
    return str(manifest["budget"]["stat"])


def all_predicted(manifest: Mapping[str, Any], profile: str) -> bool:
    reports = [e["latency"][profile] for e in (manifest["teacher"], *manifest["models"])
               if profile in e.get("latency", {})]
    return bool(reports) and not any(is_measured(r) for r in reports)


def safe_name(name: str) -> str:
    """A size or profile name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def tensorrt_line(manifest: Mapping[str, Any]) -> str:
    trt = manifest["tensorrt"]
    if trt["available"]:
        return f"TensorRT: available ({trt['reason']})" if trt.get("reason") else "TensorRT: available"
    return str(trt["reason"]) or "TensorRT: not available on this machine"


@dataclass(frozen=True)
class Table:
    """A summary table as plain strings; each renderer adds its own markup."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    kinds: Sequence[str]  # per row: "teacher", "selected", "flagged" or "size"


def summary_table(manifest: Mapping[str, Any]) -> Table:
    profs = profiles(manifest)
    budget_profile = manifest["budget"]["profile"]
    has_int8 = any("int8" in m for m in manifest["models"])
    metrics = task_metrics(manifest)
    header = ["Size", "Width", "Params", "MACs", *[m["label"] for m in metrics], "Teacher agreement"]
    header += [f"Latency {p} ({stat_of(manifest, p)})" for p in profs]
    # where a profile was measured, the predictor's figure stands beside it so its error is visible
    predicted_cols = [p for p in profs if any(is_measured(m["latency"].get(p)) and
                                              "predicted_ms" in (m["latency"][p].get("env") or {})
                                              for m in manifest["models"])]
    header += [f"Predicted {p}" for p in predicted_cols]
    # language models: one generated token with the KV cache, beside the full-window latency
    decode_cols = [p for p in profs if any(_decode_latency(m, p) for m in manifest["models"])]
    header += [f"Per token {p} (KV cache)" for p in decode_cols]
    if has_int8:
        header += ["INT8 accuracy", f"INT8 latency {budget_profile}"]
    header += ["ONNX parity (max abs diff)", f"Meets {manifest['budget']['text']}"]

    t = manifest["teacher"]
    rows = [["teacher", "—", fmt_count(t.get("params")), fmt_count(t.get("macs")),
             *[fmt_metric(metric_value(t, m), m) for m in metrics], "—",
             *[fmt_latency(t["latency"].get(p)) for p in profs], *["—" for _ in predicted_cols],
             *[fmt_latency(_decode_latency(t, p)) for p in decode_cols],
             *(["—", "—"] if has_int8 else []), "—", "—"]]
    kinds = ["teacher"]
    for m in manifest["models"]:
        int8 = m.get("int8")
        row = [m["name"], fmt_ratio(m["ratio"]), fmt_count(m["params"]), fmt_count(m["macs"]),
               *[fmt_metric(metric_value(m, x), x) for x in metrics], fmt_pct(m["teacher_agreement"]),
               *[fmt_latency(m["latency"].get(p)) for p in profs],
               *[_fmt_predicted(m["latency"].get(p)) for p in predicted_cols],
               *[fmt_latency(_decode_latency(m, p)) for p in decode_cols]]
        if has_int8:
            row += [fmt_pct(int8["accuracy"]) if int8 else "—",
                    fmt_latency(int8["latency"].get(budget_profile)) if int8 else "—"]
        parity = fmt_diff(m["onnx_max_abs_diff"]) + ("" if m["parity_ok"] else " FLAGGED")
        row += [parity, "yes" if m["meets_budget"] else "no"]
        rows.append(row)
        kinds.append("flagged" if not m["parity_ok"] else "selected" if m["name"] == manifest["selected"] else "size")
    return Table(header=header, rows=rows, kinds=kinds)


def _decode_latency(entry: Mapping[str, Any], profile: str) -> Mapping[str, Any] | None:
    return ((entry.get("decode") or {}).get("latency") or {}).get(profile)


def formats_table(manifest: Mapping[str, Any]) -> Table | None:
    """Each size in each requested format (`--formats`), its ONNX file first for comparison: file,
    parity against PyTorch, latency on this host, and why a format is missing or flagged.
    None when the run asked for ONNX only."""
    if not any(m.get("formats") for m in manifest["models"]):
        return None
    header = ["Size", "Format", "File", "Runtime", "Max abs diff", "Top-1 agreement", "Latency (this host)", "Status"]
    rows: list[list[str]] = []
    kinds: list[str] = []
    for m in manifest["models"]:
        formats = m.get("formats") or {}
        # the ONNX figure on the profile whose settings the formats were timed under
        timed_on = next((f["latency"].get("profile") for f in formats.values() if f.get("latency")), None)
        onnx_latency = m["latency"].get(timed_on) if timed_on else None
        rows.append([m["name"], "onnx", m["files"]["onnx"], "ONNX Runtime", fmt_diff(m["onnx_max_abs_diff"]), "—",
                     fmt_latency(onnx_latency), "ok" if m["parity_ok"] else "FLAGGED: outputs differ from PyTorch"])
        kinds.append("size" if m["parity_ok"] else "flagged")
        for name, f in formats.items():
            parity = f.get("parity") or {}
            if f["ok"]:
                status = "ok"
            elif f.get("file"):
                status = f"FLAGGED: {f.get('reason') or 'not checked'}"
            else:
                status = f"not produced: {f.get('reason') or 'no reason recorded'}"
            rows.append([m["name"], name, f.get("file") or "—", f.get("runtime") or "—",
                         fmt_diff(parity["max_abs_diff"]) if parity else "—",
                         fmt_pct(parity.get("argmax_agreement")), fmt_latency(f.get("latency")), status])
            kinds.append("size" if f["ok"] else "flagged")
    return Table(header=header, rows=rows, kinds=kinds)


def formats_note(manifest: Mapping[str, Any]) -> str:
    """What the formats table's latency column means (the same settings for every format)."""
    timed_on = sorted({f["latency"]["profile"] for m in manifest["models"] for f in (m.get("formats") or {}).values()
                       if f.get("latency")})
    where = f"under the settings of {', '.join(timed_on)} (threads, batch, warm-up, repeats)" if timed_on \
        else "under one host CPU profile's settings"
    return (f"Every format is measured on this host, each in its own runtime, {where}, so its figure stands "
            "beside the ONNX figure (each latency is that profile's statistic); parity is against PyTorch on "
            "the validation inputs the ONNX file was checked on.")


def _fmt_predicted(report: Mapping[str, Any] | None) -> str:
    env = (report or {}).get("env") or {}
    if "predicted_ms" not in env:
        return "—"
    err = env.get("prediction_error")
    return f"{env['predicted_ms']:.3f} ms" + (f" ({err:+.0%})" if isinstance(err, (int, float)) else "")


def headline(manifest: Mapping[str, Any]) -> str:
    """One sentence: what fits the budget, or that nothing does."""
    b = manifest["budget"]
    where = f"{b['text']} ({b['stat']}) on {b['profile']}"
    selected = manifest["selected"]
    if selected is None or not manifest["budget_met"]:
        return f"No size meets the budget of {where}."
    m = next(x for x in manifest["models"] if x["name"] == selected)
    lat = fmt_latency(m["latency"].get(b["profile"]))
    label = headline_label(manifest)
    label = label[:1].lower() + label[1:]  # "accuracy", "next-token accuracy"
    return (f"Selected {selected} for the budget of {where}: {label} {fmt_pct(m['accuracy'])}, "
            f"latency {lat}.")


def claim_lines(manifest: Mapping[str, Any]) -> list[str]:
    """How the budget claim was checked, and what the INT8 copies are worth on the budget's profile."""
    b = manifest["budget"]
    out = []
    if b.get("factor") is not None:
        out.append(f"The budget {b['text']} is {b['factor']:g} x the teacher's {b['stat']} of "
                   f"{b['teacher_ms']:.3g} ms on {b['profile']}: {b['ms']:.3g} ms.")
    out.append("A size fits when its measured statistic plus the spread of that statistic within its own "
               "measurement is within the budget, so a size that meets it only by noise is not selected.")
    for v in manifest.get("verification", []):
        third = (f", then again {v['third_ms']:.3g} ms (margin {v['margin_third']:+.1%}) as the first two disagreed"
                 if v.get("third_ms") is not None else "")
        why = (" (no size fit at its first measurement, and a slow spell of the machine can slow every size "
               "at once, so it was timed again as a near miss)" if v.get("after_miss") else "")
        out.append(f"{v['size']} re-measured in a fresh process after all other measurements{why}: "
                   f"{v['second_ms']:.3g} ms (first {v['first_ms']:.3g} ms; margin {v['margin_first']:+.1%} then "
                   f"{v['margin_second']:+.1%}){third}: "
                   f"{'the claim holds' if v['holds'] else 'MISSES the budget, not selected'}.")
    for m in manifest["models"]:
        q = m.get("int8")
        if q and q.get("settings"):
            s = q["settings"]
            out.append(f"{m['name']} INT8 ({s.get('activation_type')}/{s.get('weight_type')}"
                       f"{', reduce_range' if s.get('reduce_range') else ''}, for {s.get('cpu_class')}): "
                       f"agreement with fp32 {fmt_pct(q.get('agreement_with_fp32'))}; {q.get('note', '')}.")
    return out


def flags(manifest: Mapping[str, Any]) -> list[str]:
    """Everything a reader must not miss: parity failures and their reasons, latency warnings."""
    out: list[str] = []
    for m in manifest["models"]:
        if not m["parity_ok"]:
            reasons = "; ".join(m.get("notes", [])) or f"max abs diff {fmt_diff(m['onnx_max_abs_diff'])}"
            out.append(f"{m['name']}: ONNX file flagged, its outputs differ from PyTorch: {reasons}")
        for profile, report in m["latency"].items():
            for w in report.get("warnings", []):
                out.append(f"{m['name']} on {profile}: {w}")
        if m.get("int8") and m["int8"].get("speedup") is not None and not m["int8"].get("faster_than_fp32"):
            out.append(f"{m['name']}: {m['int8'].get('note')}")
        for name, f in (m.get("formats") or {}).items():
            if not f["ok"]:
                what = "flagged" if f.get("file") else "not produced"
                out.append(f"{m['name']}: {name} {what}: {f.get('reason') or 'no reason recorded'}")
    for r in (manifest.get("training") or {}).get("rollbacks") or []:
        acc, best = r.get("accuracy"), r.get("best_accuracy")
        why = (f"loss {r['loss']}" if isinstance(r.get("loss"), str) or acc is None or best is None
               else f"training accuracy {fmt_pct(acc)}, best {fmt_pct(best)}")
        out.append(f"distillation diverged in epoch {r['epoch']} ({why}): rolled back to the end of epoch "
                   f"{r['back_to']} and continued at {r['lr_scale']:.3g}x the learning rate")
    for v in manifest.get("verification", []):
        if not v["holds"]:
            first = "missed the budget when first measured and" if v.get("after_miss") else \
                "met the budget when first measured but"
            out.append(f"{v['size']} {first} not when re-measured ({v['second_ms']:.3g} ms); it was not selected")
    return out


def files_of(model: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """(role, path, sha256 or None) per file; hashes are keyed by role (or, older, by path)."""
    hashes = model.get("sha256", {})
    return [(role, str(path), hashes.get(role) or hashes.get(path)) for role, path in model["files"].items()]


def link(stored: str, run_dir: Path | None = None) -> str:
    """A link from a file at the top of the run folder (report, card) to a stored manifest path."""
    p = Path(stored)
    if not p.is_absolute():
        return p.as_posix()
    if run_dir is not None and p.is_relative_to(run_dir.resolve()):
        return p.relative_to(run_dir.resolve()).as_posix()
    return p.as_uri()


def model_card_filename(name: str) -> str:
    """`model_card_<name>.md`, with the name made safe for a file system."""
    return f"model_card_{safe_name(name)}.md"


def files_with_card(model: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """`files_of`, plus the model card where the manifest does not list it (it is always written)."""
    entries = files_of(model)
    if "model_card" not in model["files"]:
        entries.append(("model_card", model_card_filename(model["name"]), None))
    return entries


def _premeasure_detail(verified: Mapping[str, Any]) -> str:
    """What the check before training did: how many networks it timed, and what it changed."""
    if "skipped" in verified:
        return f"skipped: {verified['skipped']}"
    checked = verified.get("checked") or []
    if not checked:
        return ""
    changed = [what for what, done in (("student re-selected", verified.get("reselected")),
                                       ("sizes re-planned", verified.get("sizes_replanned"))) if done]
    return f"{len(checked)} candidates and sizes timed untrained before training" + \
        (f" ({', '.join(changed)})" if changed else "")


def _anchor_detail(anchor: Mapping[str, Any]) -> str:
    """What correcting the predictor on the teacher's operator mix did."""
    if "skipped" in anchor:
        return f"skipped: {anchor['skipped']}"
    timed, fit = anchor.get("timed") or [], anchor.get("fit_error") or {}
    if not timed:
        return ""
    return (f"latency predictor corrected x{anchor.get('scale', 1):.2f} on {len(timed)} networks of the teacher's "
            f"operator mix (median error {fit.get('median_abs_before', 0):.0%} -> {fit.get('median_abs_after', 0):.0%})")


def time_rows(manifest: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(stage, seconds, share of the run, what it did): where the run's wall time went."""
    stages: Mapping[str, float] = manifest.get("stages") or {}
    total = float(manifest.get("seconds") or sum(stages.values()) or 0.0)
    search, training = manifest.get("search") or {}, manifest.get("training") or {}
    epochs = len(training.get("history") or [])
    rollbacks = training.get("rollbacks") or []
    ran = epochs + len(rollbacks)  # a rolled-back epoch ran too
    arithmetic = " in bfloat16" if training.get("precision") == "bf16" else ""
    if arithmetic and training.get("precision_fallback_epoch"):
        arithmetic += f" (float32 from epoch {training['precision_fallback_epoch']}: non-finite bfloat16 gradients)"
    # a family from random weights trains longer by default (distill/epochs.py): say so where it did
    scratch = " (from random weights)" if "random weights" in str(training.get("epochs_why") or "") else ""
    stopped = training.get("stopped_early")
    if stopped:  # say what the run did not do, and why
        scratch += (f" (of {stopped['epochs_planned']} planned: validation accuracy flat from epoch "
                    f"{stopped['plateau_epoch']}, cooled down and ended)")
    distilled = (f"{epochs} epochs of nested distillation{scratch}{arithmetic}, "
                 f"{training['train_seconds'] / ran:.1f} s each"
                 + (f"; diverged {len(rollbacks)}x, rolled back to a learning rate x{rollbacks[-1]['lr_scale']:.2g}"
                    if rollbacks else "")) if epochs and training.get("train_seconds") else ""
    detail = {
        "calibration": "latency predictor taken from the cache" if stages.get("calibration", 0) < 0.5
        else "latency predictor calibrated (once per machine and input shape)",
        "search": f"{search['n_trials']} candidates ranked without training"
                  + (f", {1000 * stages['search'] / search['n_trials']:.0f} ms each"
                     if search.get("n_trials") and stages.get("search") else "") if "n_trials" in search else "",
        "anchor": _anchor_detail(search.get("anchor") or {}),
        "premeasure": _premeasure_detail(search.get("verified") or {}),
        "distill": distilled,
        "students": "; ".join(part for part in (  # manifests written before search and distill were apart
            f"{search['n_trials']} search trials" if "n_trials" in search else "", distilled) if part),
        "export": f"{len(manifest['models'])} sizes exported, parity-checked and measured"
                  + (f" ({len(manifest.get('reused', {}).get('exports', []))} reused)"
                     if manifest.get("reused", {}).get("exports") else ""),
        "select": "selected size re-measured in a fresh process",
    }
    return [(stage, f"{s:.1f}", f"{s / total:.0%}" if total > 0 else "–", detail.get(stage, ""))
            for stage, s in stages.items()]
