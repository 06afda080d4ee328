"""Report figures: accuracy vs latency per profile, the search front, training curves.

Figures are drawn on `matplotlib.figure.Figure` objects (the Agg canvas), never
through `pyplot`: no global state, no display needed, safe inside a server or a
test run. Each figure is saved as PNG (embedded in the HTML) and SVG (for docs),
with the SVG made byte-reproducible (fixed hash salt, no date).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..files import write_bytes
from ._view import (
    PREDICTED,
    all_predicted,
    fmt_count,
    headline_label,
    is_measured,
    latency_ms,
    profiles,
    safe_name,
    stat_of,
)

__all__ = ["Plot", "accuracy_latency_plot", "make_plots", "search_front_plot", "training_plot"]

_SIZE = (7.0, 4.6)  # inches: readable at 700 px wide in the report
_DPI = 110
_FP32, _INT8, _TEACHER, _BUDGET, _SELECTED = "#1f77b4", "#ff7f0e", "#222222", "#d62728", "#2ca02c"
_OFF_SCALE = 4.0  # a budget this many times beyond the x range is named at the edge, not drawn to scale


@dataclass(frozen=True)
class Plot:
    """One saved figure: `png`/`svg` are paths; `caption` says how to read it."""

    key: str
    title: str
    caption: str
    section: str  # report heading the figure sits under; figures of one section are adjacent
    png: Path
    svg: Path


def make_plots(manifest: Mapping[str, Any], out_dir: Path) -> list[Plot]:
    """Every figure the manifest has data for, written into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [accuracy_latency_plot(manifest, p, out_dir) for p in profiles(manifest)]
    plots += [p for p in (search_front_plot(manifest, out_dir), training_plot(manifest, out_dir)) if p]
    return plots


def accuracy_latency_plot(manifest: Mapping[str, Any], profile: str, out_dir: Path) -> Plot:
    """Teacher, every size (and its INT8 copy) on one profile, with the budget line.

    Predicted latencies are drawn hollow and labelled "predicted" next to the point,
    so a figure copied out of the report cannot pass a prediction off as a measurement.
    """
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    stat = stat_of(manifest, profile)
    budget = manifest["budget"]

    sizes = []
    labels: list[tuple[str, float, float, dict[str, Any]]] = []
    for m in manifest["models"]:
        report = m["latency"].get(profile)
        ms = latency_ms(report)
        if ms is not None:
            sizes.append((ms, 100 * m["accuracy"], m, is_measured(report)))
    sizes.sort(key=lambda s: s[0])
    if len(sizes) > 1:
        ax.plot([s[0] for s in sizes], [s[1] for s in sizes], color=_FP32, alpha=0.35, lw=1.2, zorder=1)

    for ms, acc, m, measured in sizes:
        ax.scatter([ms], [acc], s=60, zorder=3, color=_FP32 if measured else "white", edgecolors=_FP32,
                   linewidths=1.6, linestyle="-" if measured else "--")
        if m["name"] == manifest["selected"]:
            ax.scatter([ms], [acc], s=240, zorder=2, facecolors="none", edgecolors=_SELECTED, linewidths=2)
        label = m["name"] + ("" if measured else f"\n({PREDICTED})")
        if not m["parity_ok"]:
            label += "\n(parity flagged)"
        labels.append((label, ms, acc, {"fontsize": 8.5, "color": _FP32 if measured else "#555555"}))
        int8 = m.get("int8")
        int8_ms = latency_ms(int8["latency"].get(profile)) if int8 else None
        if int8 and int8_ms is not None:
            i_acc = 100 * int8["accuracy"]
            ax.annotate("", (int8_ms, i_acc), xytext=(ms, acc),
                        arrowprops={"arrowstyle": "->", "color": _INT8, "alpha": 0.6, "lw": 1})
            ax.scatter([int8_ms], [i_acc], marker="^", s=55, zorder=3, color=_INT8)
            tag = " int8" + ("" if is_measured(int8["latency"][profile]) else f" ({PREDICTED})")
            labels.append((m["name"] + tag, int8_ms, i_acc, {"fontsize": 8, "color": _INT8, "below": True}))

    teacher = manifest["teacher"]
    t_ms = latency_ms(teacher["latency"].get(profile))
    if t_ms is not None and teacher.get("accuracy") is not None:
        t_measured = is_measured(teacher["latency"][profile])
        ax.scatter([t_ms], [100 * teacher["accuracy"]], marker="*", s=190, zorder=3,
                   color=_TEACHER if t_measured else "white", edgecolors=_TEACHER, linewidths=1.2)
        labels.append(("teacher" + ("" if t_measured else f"\n({PREDICTED})"), t_ms, 100 * teacher["accuracy"],
                       {"fontsize": 9, "color": _TEACHER}))

    _legend(ax, has_measured=any(s[3] for s in sizes), has_predicted=any(not s[3] for s in sizes),
            has_int8=any("int8" in m and profile in m["int8"]["latency"] for m in manifest["models"]),
            has_selected=any(s[2]["name"] == manifest["selected"] for s in sizes))
    ax.grid(alpha=0.25)
    ax.margins(x=0.12, y=0.15)
    on_scale = _budget_line(ax, budget, profile)
    _place_labels(ax, labels)
    if all_predicted(manifest, profile):
        kind = PREDICTED
    elif any(not s[3] for s in sizes):
        kind = f"hollow = {PREDICTED}"
    else:
        kind = "measured"
    ax.set_xlabel(f"latency on {profile}, {stat} (ms, {kind})")
    label = headline_label(manifest)  # the task's headline metric: what `accuracy` holds
    ax.set_ylabel(f"{label.lower()} (%)")
    ax.set_title(f"{label} vs latency: {profile}", fontsize=11)
    key = f"accuracy_latency_{safe_name(profile)}"
    caption = (f"Each size's validation accuracy against its {stat} latency on {profile}; "
               f"hollow markers are {PREDICTED} latencies, filled ones measured. " + _budget_caption(budget, on_scale))
    return _save(fig, out_dir, key, f"{label} vs latency: {profile}", caption, f"{label} vs latency")


def _budget_caption(budget: Mapping[str, Any], on_scale: bool) -> str:
    if on_scale:
        return f"The dashed red line is the budget ({budget['text']})."
    return f"The budget ({budget['text']}) lies far right of every point, so it is named at the right edge."


def _budget_line(ax: Axes, budget: Mapping[str, Any], profile: str) -> bool:
    """Dashed line at the budget, labelled on whichever side has room (limits must be final).

    A budget far above every point (e.g. 10s for sizes of 0.05 ms) is named at the right edge
    instead: drawn to scale it would squash every point against the left axis. Returns whether
    the line is drawn to scale.
    """
    lo, hi = ax.get_xlim()
    note = "" if profile == budget["profile"] else f", set for {budget['profile']}"
    if hi > 0 and budget["ms"] > _OFF_SCALE * hi:
        ax.annotate(f"budget {budget['text']} ({budget['stat']}{note}) off scale", (1, 0.5), xytext=(-3, 0),
                    xycoords="axes fraction", textcoords="offset points", va="center", ha="right", rotation=90,
                    fontsize=8, color=_BUDGET)  # along the right edge: clear of points, labels and legend
        return False
    ax.set_xlim(min(lo, budget["ms"] * 0.9), max(hi, budget["ms"] * 1.1))  # the line is always in view
    lo, hi = ax.get_xlim()
    ax.axvline(budget["ms"], color=_BUDGET, ls="--", lw=1.3, zorder=0)
    right = (budget["ms"] - lo) / (hi - lo) < 0.5
    ax.annotate(f"budget {budget['text']} ({budget['stat']}{note})", (budget["ms"], 1),
                xytext=(4 if right else -4, -4), xycoords=("data", "axes fraction"), textcoords="offset points",
                va="top", ha="left" if right else "right", fontsize=8.5, color=_BUDGET)
    return True


def _place_labels(ax: Axes, labels: list[tuple[str, float, float, dict[str, Any]]]) -> None:
    """Label points once the limits are final: right of the point, or left of it near the right edge."""
    lo, hi = ax.get_xlim()
    for text, x, y, style in labels:
        style = dict(style)
        below = style.pop("below", False)  # e.g. INT8 points, whose arrow arrives from the right
        right = (x - lo) / (hi - lo) < 0.78
        ax.annotate(text, (x, y), xytext=(0 if below else 10 if right else -10, -8 if below else 0),
                    textcoords="offset points", ha="center" if below else "left" if right else "right",
                    va="top" if below else "center", **style)


def _legend(ax: Axes, *, has_measured: bool, has_predicted: bool, has_int8: bool, has_selected: bool) -> None:
    """A legend listing only what this figure actually draws."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="*", ls="", color=_TEACHER, ms=11, label="teacher")]
    if has_measured:
        handles.append(Line2D([], [], marker="o", ls="", color=_FP32, ms=7, label="size, measured"))
    if has_predicted:
        handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec=_FP32, ms=7, label=f"size, {PREDICTED}"))
    if has_int8:
        handles.append(Line2D([], [], marker="^", ls="", color=_INT8, ms=7, label="INT8 copy"))
    if has_selected:
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec=_SELECTED, mew=2, ms=13, label="selected"))
    handles.append(Line2D([], [], ls="--", color=_BUDGET, label="budget"))
    # beside the axes, not on them: inside, a corner legend hid whichever point sat in that corner
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=8)


def search_front_plot(manifest: Mapping[str, Any], out_dir: Path) -> Plot | None:
    """The search's Pareto front: proxy score against predicted latency, one panel per proxy."""
    front = (manifest.get("search") or {}).get("pareto") or []
    proxies = sorted({k for c in front for k, v in c["proxy_scores"].items() if v is not None})
    if not front or not proxies:
        return None
    proxies = proxies[:3]  # more panels become unreadable at report width
    fig = Figure(figsize=(_SIZE[0], 3.6 if len(proxies) == 1 else 3.2), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, len(proxies), squeeze=False)[0]
    on_scale = True
    for ax, proxy in zip(axes, proxies):
        pts = sorted((c["est_latency_ms"], c["proxy_scores"][proxy], c.get("params")) for c in front
                     if c["proxy_scores"].get(proxy) is not None)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, color=_FP32, alpha=0.4, lw=1)
        ax.scatter(xs, ys, s=40, color="white", edgecolors=_FP32, linewidths=1.5, linestyle="--", zorder=3)
        labels = [(f"{fmt_count(params)} params", x, y, {"fontsize": 7.5, "color": "#555555"})
                  for x, y, params in pts if params]
        ax.set_ylabel(f"{proxy} proxy score")
        ax.grid(alpha=0.25)
        ax.margins(x=0.15, y=0.12)
        on_scale = _budget_line(ax, manifest["budget"], manifest["budget"]["profile"]) and on_scale
        _place_labels(ax, labels)
    # one shared x label: side by side, a label per panel runs into its neighbours
    fig.supxlabel(f"latency on {manifest['budget']['profile']} (ms, {PREDICTED})", fontsize=10)
    fig.suptitle("Search Pareto front (latencies predicted, not measured)", fontsize=11)
    caption = (f"The {len(front)} candidates on the search's Pareto front: zero-cost proxy score (higher is "
               f"better) against {PREDICTED} latency. " + _budget_caption(manifest["budget"], on_scale))
    return _save(fig, out_dir, "search_front", "Search Pareto front", caption, "Search")


def training_plot(manifest: Mapping[str, Any], out_dir: Path) -> Plot | None:
    """Distillation loss and per-size validation accuracy by epoch."""
    history = (manifest.get("training") or {}).get("history") or []
    if not history:
        return None
    fig = Figure(figsize=(_SIZE[0], 3.2), dpi=_DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    losses = [(h["epoch"], h["loss"]) for h in history if h.get("loss") is not None]
    if losses:
        loss_ax.plot([e for e, _ in losses], [v for _, v in losses], color=_TEACHER, marker="o", ms=3)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.grid(alpha=0.25)
    per_size = [_accuracies(h) for h in history]
    names = list(dict.fromkeys(k for accs in per_size for k in accs))
    for name in names:
        pts = [(h["epoch"], 100 * acc) for h, accs in zip(history, per_size)
               if (acc := accs.get(name)) is not None]
        acc_ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", ms=3, label=name)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("validation accuracy (%)")
    acc_ax.grid(alpha=0.25)
    if names:
        acc_ax.legend(fontsize=8, title="size", title_fontsize=8)
    if epochs:
        loss_ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        acc_ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.suptitle("Training", fontsize=11)
    caption = "Training loss and each size's validation accuracy after every epoch."
    return _save(fig, out_dir, "training", "Training curves", caption, "Training")


def _accuracies(entry: Mapping[str, Any]) -> dict[str, float | None]:
    """`val_acc` is {size: accuracy} for a nested family, or one number for a single student."""
    acc = entry.get("val_acc")
    if isinstance(acc, Mapping):
        return dict(acc)
    return {"student": acc} if acc is not None else {}


def _save(fig: Figure, out_dir: Path, key: str, title: str, caption: str, section: str) -> Plot:
    png, svg = out_dir / f"{key}.png", out_dir / f"{key}.svg"
    with matplotlib.rc_context({"svg.hashsalt": "compressor", "svg.fonttype": "none"}):
        # rendered in memory, then written atomically: a full disk is one clear error, not half a PNG
        for path, fmt, metadata in ((png, "png", {"Software": None}),
                                    (svg, "svg", {"Date": None, "Creator": None})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, metadata=metadata)
            write_bytes(path, buffer.getvalue())
    return Plot(key=key, title=title, caption=caption, section=section, png=png, svg=svg)
