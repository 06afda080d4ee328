"""`report.html`: one self-contained page (inline CSS, PNGs embedded as data URIs).

Self-contained so it can be mailed, attached to a ticket or opened from an
artefact store without the run folder; links to model files stay relative and
work when it is opened in place. Every manifest string is escaped.
"""
from __future__ import annotations

import base64
import json
from html import escape
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

__all__ = ["render_html"]

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1120px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:26px;margin:0 0 8px}
h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #e5e5e5;padding-bottom:4px}
.headline{font-size:17px;padding:10px 14px;border-radius:6px;background:#eef7ee;border-left:4px solid #2ca02c}
.headline.miss{background:#fdf0ef;border-left-color:#d62728}
.muted{color:#666;font-size:13px}.trt{font-size:14px;margin:10px 0}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid #e8e8e8;text-align:right;white-space:nowrap}
th{background:#f3f3f3;font-weight:600;white-space:normal;vertical-align:bottom}
th:first-child,td:first-child,table.left td,table.left th{text-align:left}
tr.teacher td{color:#444;font-style:italic}
tr.selected td{background:#eef7ee;font-weight:600}
tr.flagged td{background:#fff4e0}
.pred{color:#8a6d00;font-size:12px}
figure{margin:14px 0 26px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}
ul.flags li{color:#8a4b00}
code,pre{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;border-radius:4px}
details summary{cursor:pointer;color:#333}
"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _cell(text: str) -> str:
    """Escape, and set '(predicted)' apart so it is seen at a glance."""
    suffix = f" ({PREDICTED})"
    if text.endswith(suffix):
        return f'{escape(text[:-len(suffix)])} <span class="pred">{PREDICTED}</span>'
    return escape(text)


def render_html(manifest: Mapping[str, Any], plots: Sequence[Plot], run_dir: Path) -> str:
    table = summary_table(manifest)
    t = manifest["teacher"]
    met = manifest["budget_met"] and manifest["selected"] is not None
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # served over HTTP, the browser would ask for a /favicon.ico: a 404
        f"<title>Compression report: {escape(str(manifest['budget']['text']))} on "
        f"{escape(str(manifest['budget']['profile']))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>Compression report</h1>",
        f'<p class="headline{"" if met else " miss"}">{escape(headline(manifest))}</p>',
        f'<p class="muted">Teacher <code>{escape(t["path"])}</code> ({escape(t["format"])}, '
        f"{escape(fmt_count(t['params']))} parameters, sha256 <code>{escape(t['sha256'][:12])}…</code>). "
        f"Created {escape(manifest['created'])} by compressor {escape(manifest['compressor_version'])}.</p>",
        f'<p class="trt">{escape(tensorrt_line(manifest))}</p>',
        "<h2>Sizes</h2>",
        '<div class="table-wrap"><table>',
        "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in table.header) + "</tr></thead><tbody>",
    ]
    for row, kind in zip(table.rows, table.kinds):
        cells = [_cell(c) for c in row]
        if kind == "selected":
            cells[0] += " ✓"
        elif kind == "flagged":
            cells[0] += " ⚠"
        parts.append(f'<tr class="{kind}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts += [
        "</tbody></table></div>",
        f'<p class="muted">✓ selected. <span class="pred">{PREDICTED}</span>: latency from a model of the '
        "hardware, not a measurement. Accuracy is on the validation split; teacher agreement is top-1 "
        "agreement with the teacher.</p>",
    ]

    fmts = formats_table(manifest)
    if fmts is not None:
        parts += ["<h2>Formats</h2>", '<div class="table-wrap"><table class="left">',
                  "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in fmts.header) + "</tr></thead><tbody>"]
        # the status cell holds a whole reason when a format is missing: let it wrap
        parts += [f'<tr class="{kind}">' + "".join(f"<td>{_cell(c)}</td>" for c in row[:-1])
                  + f'<td style="white-space:normal;min-width:18em">{_cell(row[-1])}</td></tr>'
                  for row, kind in zip(fmts.rows, fmts.kinds)]
        parts += ["</tbody></table></div>", f'<p class="muted">{escape(formats_note(manifest))}</p>']

    parts += ["<h2>Budget claim</h2>", "<ul>"] + [f"<li>{escape(line)}</li>" for line in claim_lines(manifest)] \
        + ["</ul>"]
    problems = flags(manifest)
    if problems:
        parts += ["<h2>Flags</h2>", '<ul class="flags">'] + [f"<li>⚠ {escape(p)}</li>" for p in problems]
        parts.append("</ul>")

    section = None
    for plot in plots:
        if plot.section != section:
            section = plot.section
            parts.append(f"<h2>{escape(section)}</h2>")
        svg = plot.svg.relative_to(run_dir).as_posix()
        parts += [
            f'<figure id="{escape(plot.key)}"><img src="{_data_uri(plot.png)}" alt="{escape(plot.title)}">',
            f'<figcaption>{escape(plot.caption)} <a href="{escape(svg)}">SVG</a></figcaption></figure>',
        ]

    rows = time_rows(manifest)
    if rows:
        parts += ["<h2>Where the time went</h2>", f"<p>Wall time {manifest.get('seconds', 0):.0f} s.</p>",
                  '<div class="table-wrap"><table class="left">',
                  "<thead><tr><th>Stage</th><th>Seconds</th><th>Share</th><th>What it did</th></tr></thead><tbody>"]
        parts += [f"<tr><td>{escape(stage)}</td><td>{sec}</td><td>{share}</td><td>{escape(what)}</td></tr>"
                  for stage, sec, share, what in rows]
        parts.append("</tbody></table></div>")

    parts += ["<h2>Files</h2>", '<div class="table-wrap"><table class="left">',
              "<thead><tr><th>Size</th><th>Role</th><th>File</th><th>sha256 (first 12)</th></tr></thead><tbody>"]
    for m in manifest["models"]:
        for role, path, digest in files_with_card(m):
            parts.append(f"<tr><td>{escape(m['name'])}</td><td>{escape(role)}</td>"
                         f'<td><a href="{escape(link(path, run_dir))}">{escape(path)}</a></td>'
                         f"<td>{f'<code>{escape(digest[:12])}</code>' if digest else '—'}</td></tr>")
    parts.append("</tbody></table></div>")

    versions = ", ".join(f"{escape(k)} {escape(str(v) if v is not None else 'not installed')}"
                         for k, v in manifest["versions"].items())
    parts += [
        "<h2>Environment</h2>", f'<p class="muted">{versions}</p>',
        "<details><summary>Resolved configuration</summary>",
        f"<pre>{escape(json.dumps(manifest['config'], indent=2, default=str))}</pre></details>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
