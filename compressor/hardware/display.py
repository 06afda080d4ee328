"""Short human-readable views of latency reports and profiles (rich tables and plain lines)."""
from __future__ import annotations

from typing import Sequence

from rich import box
from rich.table import Table

from ..budget import Budget
from ..types import HardwareProfile, LatencyReport
from .measure import unavailable_reason

__all__ = ["profile_report_lines", "profiles_table", "report_table"]


def _threads(n: int | None) -> str:
    return "all" if n == 0 else str(n)


def profile_report_lines(report: LatencyReport, budget: Budget | None = None) -> list[str]:
    """A report as plain lines (for logs and report.md): the figures, the environment
    that produced them, whether it meets `budget`, then the warnings."""
    kind = "measured" if report.measured else f"PREDICTED ({report.env.get('method', 'model')})"
    lines = [f"{report.profile}: {kind}, batch {report.batch_size}, budget statistic {report.stat} = "
             f"{report.value():.4g} ms"]
    if report.measured:
        lines.append(f"p50 {report.p50_ms:.4g} ms | p90 {report.p90_ms:.4g} ms | p99 {report.p99_ms:.4g} ms | "
                     f"mean {report.mean_ms:.4g} ± {report.std_ms:.2g} ms | CoV {report.cov:.1%} | "
                     f"{report.samples} samples")
        env = report.env
        where = [f"{k} {env[k]}" for k in ("cpu_model", "gpu", "ort_version", "tensorrt_version",
                                             "torch_version") if env.get(k)]
        if "intra_op_threads" in env:
            where.append(f"{env['intra_op_threads']} intra-op thread(s)")
        lines.append(", ".join(where))
        if "predicted_ms" in env:
            lines.append(f"predicted ({env['predicted_by']}) {env['predicted_ms']:.4g} ms, "
                         f"error {env['prediction_error']:+.1%}")
    if budget is not None:
        verdict = "meets" if budget.fits(report) else "MISSES"
        lines.append(f"{verdict} budget {budget.ms:g} ms ({budget.stat}), margin "
                     f"{budget.margin(report):+.1%}{'' if report.measured else ' (predicted)'}")
    lines += [f"warning: {w}" for w in report.warnings]
    return lines


def report_table(report: LatencyReport, title: str = "", budget: Budget | None = None) -> Table:
    """One report as a rich table: one row per statistic, the budget's marked."""
    kind = "measured" if report.measured else "predicted"
    table = Table(title=title or f"{report.profile} ({kind})", title_justify="left", show_header=True)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = []
    if report.measured:
        for stat in ("p50", "p90", "p99"):
            mark = "  ← budget" if stat == report.stat else ""
            rows.append((stat + mark, f"{report.value(stat):.4g} ms"))  # type: ignore[arg-type]
        rows += [("mean ± std", f"{report.mean_ms:.4g} ± {report.std_ms:.2g} ms"),
                 ("CoV", f"{report.cov:.1%}"), ("samples", str(report.samples)),
                 ("batch", str(report.batch_size))]
        env = report.env
        for key, label in (("intra_op_threads", "threads"), ("ort_version", "onnxruntime"),
                           ("tensorrt_version", "tensorrt"), ("gpu", "gpu"), ("cpu_model", "cpu")):
            if env.get(key) is not None:
                rows.append((label, str(env[key])))
        if "predicted_ms" in env:
            rows.append((f"predicted ({env['predicted_by']})",
                         f"{env['predicted_ms']:.4g} ms ({env['prediction_error']:+.1%})"))
    else:
        rows += [(f"{report.stat} (predicted, {report.env.get('method', 'model')})", f"{report.value():.4g} ms"),
                 ("batch", str(report.batch_size))]
    if report.measured and report.spread_ms:
        rows.append(("spread", f"± {report.spread_ms:.2g} ms"))
    if budget is not None:
        ok = budget.fits(report)
        rows.append(("budget", f"{budget.ms:g} ms: {'[green]met' if ok else '[red]missed'}[/] "
                               f"({budget.margin(report):+.1%})"))
    for name, value in rows:
        table.add_row(name, value)
    if report.warnings:
        table.caption = "\n".join(f"[yellow]warning:[/] {w}" for w in report.warnings)
        table.caption_justify = "left"
    return table


def profiles_table(profiles: Sequence[HardwareProfile]) -> Table:
    """Every profile with how it is timed and whether this machine can time it now."""
    table = Table(title="hardware profiles", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("name", "backend", "latency", "threads", "batch", "precision", "stat", "round_to"):
        table.add_column(col, justify="right" if col in ("threads", "batch", "round_to") else "left",
                         no_wrap=True)
    notes = []
    for p in profiles:
        reason = unavailable_reason(p)
        if not p.measured:
            latency = "[cyan]predicted"
        elif reason is None:
            latency = "[green]measured"
        else:
            latency = "[red]unavailable"
            notes.append(f"{p.name}: {reason}")
        table.add_row(p.name, p.backend, latency, _threads(p.threads) if p.backend in ("onnxruntime-cpu", "openvino-cpu") else "-",
                      str(p.batch_size), p.precision, p.stat, str(p.round_to))
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table
