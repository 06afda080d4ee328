"""`report.md`: the run summary as Markdown, images referenced relatively (`plots/*.png`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._view import (
    PREDICTED,
    claim_lines,
    files_with_card,
    flags,
    fmt_count,
    formats_note,
    formats_table,
    headline,
    link,
    summary_table,
    tensorrt_line,
    time_rows,
)
from .plots import Plot

__all__ = ["render_markdown"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(manifest: Mapping[str, Any], plots: Sequence[Plot], run_dir: Path) -> str:
    table = summary_table(manifest)
    t = manifest["teacher"]
    out = [
        "# Compression report",
        "",
        f"**{headline(manifest)}**",
        "",
        f"Teacher `{t['path']}` ({t['format']}, {fmt_count(t['params'])} parameters, sha256 `{t['sha256'][:12]}…`). "
        f"Run created {manifest['created']} by compressor {manifest['compressor_version']}.",
        "",
        tensorrt_line(manifest),
        "",
        "## Sizes",
        "",
        "| " + " | ".join(_cell(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    for row, kind in zip(table.rows, table.kinds):
        cells = [_cell(c) for c in row]
        if kind in ("teacher", "selected"):
            cells[0] = f"**{cells[0]}**" + (" (selected)" if kind == "selected" else "")
        elif kind == "flagged":
            cells[0] = f"{cells[0]} ⚠"
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"Latencies marked ({PREDICTED}) come from a model of the hardware, not a measurement. "
                "Accuracy is on the validation split; teacher agreement is top-1 agreement with the teacher."]

    fmts = formats_table(manifest)
    if fmts is not None:
        out += ["", "## Formats", "", "| " + " | ".join(_cell(h) for h in fmts.header) + " |",
                "|" + "---|" * len(fmts.header)]
        out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in fmts.rows]
        out += ["", formats_note(manifest)]

    out += ["", "## Budget claim", ""] + [f"- {line}" for line in claim_lines(manifest)]

    problems = flags(manifest)
    if problems:
        out += ["", "## Flags", ""] + [f"- ⚠ {_cell(p)}" for p in problems]

    rows = time_rows(manifest)
    if rows:
        out += ["", "## Where the time went", "", f"Wall time {manifest.get('seconds', 0):.0f} s.", "",
                "| stage | seconds | share | what it did |", "|---|---|---|---|"]
        out += [f"| {stage} | {sec} | {share} | {_cell(what)} |" for stage, sec, share, what in rows]

    section = None
    for plot in plots:
        if plot.section != section:
            section = plot.section
            out += ["", f"## {section}"]
        rel = plot.png.relative_to(run_dir).as_posix()
        svg = plot.svg.relative_to(run_dir).as_posix()
        out += ["", f"![{plot.title}]({rel})", "", f"{plot.caption} ([SVG]({svg}))"]

    out += ["", "## Files", "", "| size | role | file | sha256 (first 12) |", "|---|---|---|---|"]
    for m in manifest["models"]:
        for role, path, digest in files_with_card(m):
            out.append(f"| {_cell(m['name'])} | {role} | [{_cell(path)}]({link(path, run_dir)}) | "
                       f"{f'`{digest[:12]}`' if digest else '—'} |")

    out += ["", "## Environment", ""]
    out += [f"- {k}: {v if v is not None else 'not installed'}" for k, v in manifest["versions"].items()]
    out += ["", "## Configuration", "", "```json", json.dumps(manifest["config"], indent=2, default=str), "```", ""]
    return "\n".join(out)

