"""The table printed at the end of a run, rendered from the manifest like every other view."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from ._view import headline_label, latency_ms, mean_ratio

__all__ = ["print_summary"]


def print_summary(console: Console, manifest: Mapping[str, Any], run_dir: Path) -> None:
    """Teacher and every size on the budget's profile; the selection, its re-measurement, the files."""
    b = manifest["budget"]
    profile, stat = b["profile"], b["stat"]
    kind = "measured" if manifest["teacher"]["latency"].get(profile, {}).get("measured", True) else "predicted"
    shown = f"{b['text']} = {b['ms']:.3g} ms" if b.get("factor") else b["text"]
    table = Table(title=f"{run_dir}  (budget {shown} {stat} on {profile}, {kind})")
    for col in ("size", "width", "params", "MMACs", headline_label(manifest).lower(), "agree", f"{stat} ms", "fits"):
        table.add_column(col, justify="left" if col in ("size", "fits") else "right")
    t = manifest["teacher"]
    t_ms = latency_ms(t["latency"].get(profile))
    table.add_row("teacher", "-", f"{t['params']:,}", f"{t['macs'] / 1e6:.1f}", f"{t['accuracy']:.3f}", "-",
                  f"{t_ms:.3f}" if t_ms is not None else "-", "")
    for m in manifest["models"]:
        lat = m["latency"][profile]
        ratio = mean_ratio(m["ratio"])
        mark = ("yes" if m["meets_budget"] else "no") + (" <- selected" if m["name"] == manifest["selected"] else "")
        table.add_row(m["name"], "-" if ratio is None else f"{ratio:.3f}", f"{m['params']:,}",
                      f"{m['macs'] / 1e6:.1f}", f"{m['accuracy']:.3f}", f"{m['teacher_agreement']:.3f}",
                      f"{latency_ms(lat):.3f}{'' if lat['measured'] else ' (pred)'}", mark)
    console.print(table)
    for v in manifest.get("verification", []):
        again = f", then {v['third_ms']:.3f} ms" if v.get("third_ms") is not None else ""
        console.print(f"re-measured {v['size']} in a fresh process: {v['second_ms']:.3f} ms{again} "
                      f"(first {v['first_ms']:.3f} ms, margin {v['margin_second']:+.1%}): "
                      f"{'[green]holds' if v['holds'] else '[red]misses'}[/]")
    for m in manifest["models"]:
        if m.get("int8") and not m["int8"].get("faster_than_fp32"):
            console.print(f"[yellow]{m['name']} INT8:[/] {m['int8'].get('note', 'not faster than fp32')}")
    selected = manifest["selected"]
    if selected:
        onnx = next(m for m in manifest["models"] if m["name"] == selected)["files"]["onnx"]
        console.print(f"selected [bold]{selected}[/]: {run_dir / onnx}")
    elif manifest.get("closest"):
        c = manifest["closest"]
        why = (f"{c['over_budget_ms']:.3f} ms over" if c["over_budget_ms"] > 0 else
               f"{-c['over_budget_ms']:.3f} ms under, closer than its own measurement spread")
        console.print(f"[red]no size meets {shown}[/]: the fastest, {c['name']}, takes {c['latency_ms']:.3f} ms "
                      f"({why})")
    console.print(f"manifest: {run_dir / 'manifest.json'}   report: {run_dir / 'report.html'}")
