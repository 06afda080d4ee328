"""Human-readable outputs of a run folder, rendered from its manifest alone.

`write_report(run_dir, manifest)` writes `report.md`, `report.html` (self-contained),
the figures under `plots/` (PNG + SVG) and one `model_card_<name>.md` per size.
Everything is derived from the manifest, so a report can be re-rendered from any
finished run folder without the models or the data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..files import write_text
from ..manifest import SCHEMA_VERSION, normalize_paths, validate_manifest
from .console import print_summary
from .html import render_html
from .markdown import render_markdown
from .model_card import model_card_filename, render_model_card, write_model_card
from .plots import Plot, make_plots

__all__ = [
    "PLOTS_DIR",
    "Plot",
    "model_card_filename",
    "print_summary",
    "render_model_card",
    "write_model_card",
    "write_model_cards",
    "write_report",
]

PLOTS_DIR = "plots"


def write_model_cards(run_dir: str | Path, manifest: Mapping[str, Any]) -> dict[str, Path]:
    """`model_card_<name>.md` for every size, as {size name: path}.

    Call before writing the manifest, so it can name the cards in `files.model_card`.
    """
    manifest = normalize_paths(run_dir, manifest)
    return {m["name"]: write_model_card(Path(run_dir), manifest, m["name"]) for m in manifest["models"]}


def write_report(run_dir: str | Path, manifest: Mapping[str, Any]) -> list[Path]:
    """Write the report, its figures and the model cards; return every path written.

    The manifest is validated first (`ConfigError` in one line if it is not a valid
    manifest), so a report is never rendered from half a run.
    """
    run_dir = Path(run_dir)
    # As `write_manifest` will store it: versioned, with run-relative file paths.
    manifest = normalize_paths(run_dir, {"schema_version": SCHEMA_VERSION, **manifest})
    validate_manifest(manifest)
    plots = make_plots(manifest, run_dir / PLOTS_DIR)
    written = list(write_model_cards(run_dir, manifest).values())
    written.append(write_text(run_dir / "report.md", render_markdown(manifest, plots, run_dir)))
    written.append(write_text(run_dir / "report.html", render_html(manifest, plots, run_dir)))
    written += [p for plot in plots for p in (plot.png, plot.svg)]
    return written
