"""Report rendering from a manifest alone: files, table, embedded figures, model cards."""
from __future__ import annotations

from pathlib import Path

import pytest

import compressor.report as report_module
from compressor.errors import ConfigError
from compressor.manifest import example_manifest
from compressor.report import model_card_filename, render_model_card, write_model_cards, write_report


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests about text: skip drawing figures (the slow part on a busy machine)."""
    monkeypatch.setattr(report_module, "make_plots", lambda manifest, out_dir: [])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    run = tmp_path_factory.mktemp("run")
    return run, write_report(run, example_manifest())


def test_all_files_are_written(rendered) -> None:
    run, written = rendered
    names = {p.relative_to(run).as_posix() for p in written}
    assert {"report.md", "report.html", "model_card_s100.md", "model_card_s50.md", "model_card_s25.md"} <= names
    for stem in ("accuracy_latency_host-cpu-1t", "accuracy_latency_jetson-orin-nano", "search_front", "training"):
        assert {f"plots/{stem}.png", f"plots/{stem}.svg"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert (run / "plots" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_with_table_and_figures(rendered) -> None:
    html = (rendered[0] / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<table" in html and "<th>Size</th>" in html
    assert html.count('<img src="data:image/png;base64,') == 4
    assert "TensorRT: not available on this machine" in html
    assert '<tr class="selected"><td>s50 ✓</td>' in html
    assert '<span class="pred">predicted</span>' in html  # predicted latencies are marked
    assert "Selected s50 for the budget of 1ms (p50) on host-cpu-1t" in html


def test_markdown_references_figures_relatively(rendered) -> None:
    md = (rendered[0] / "report.md").read_text()
    assert "| **s50** (selected) |" in md
    assert "![Accuracy vs latency: host-cpu-1t](plots/accuracy_latency_host-cpu-1t.png)" in md
    assert "0.32 ms (predicted)" in md
    assert "TensorRT: not available on this machine" in md


def test_model_card_sections(rendered) -> None:
    card = (rendered[0] / "model_card_s50.md").read_text()
    for heading in ("# Model card: s50", "## What it is", "## How it was made", "## Measured figures",
                    "## Intended use", "## Limitations"):
        assert heading in card
    assert "width ratio 0.5" in card and "97.2%" in card
    assert "jetson-orin-nano are predicted" in card
    assert "INT8 copy" in card


def test_flagged_parity_is_shown_with_its_reason(tmp_path: Path, no_plots: None) -> None:
    m = example_manifest()
    m["models"][2].update(parity_ok=False, onnx_max_abs_diff=3e-3,
                          notes=["max abs diff 0.003 vs PyTorch exceeds atol 0.0001"])
    write_report(tmp_path, m)
    html, md = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    for text in (html, md):
        assert "Flags" in text and "exceeds atol 0.0001" in text and "FLAGGED" in text
    assert "validate before serving" in render_model_card(m, "s25")


def test_minimal_manifest_without_optional_sections(tmp_path: Path) -> None:
    m = example_manifest()
    del m["search"], m["training"]
    m.update(selected=None, budget_met=False)
    written = write_report(tmp_path, m)
    assert not (tmp_path / "plots" / "search_front.png").exists()
    assert "No size meets the budget" in (tmp_path / "report.html").read_text()
    assert len([p for p in written if p.suffix == ".png"]) == 2


def test_svg_output_is_reproducible(rendered, tmp_path: Path) -> None:
    from compressor.report.plots import accuracy_latency_plot

    again = accuracy_latency_plot(example_manifest(), "host-cpu-1t", tmp_path)
    assert again.svg.read_bytes() == (rendered[0] / "plots" / again.svg.name).read_bytes()


def test_manifest_strings_are_escaped(tmp_path: Path, no_plots: None) -> None:
    m = example_manifest()
    m["teacher"]["path"] = "<script>alert(1)</script>.pt"
    write_report(tmp_path, m)
    assert "<script>" not in (tmp_path / "report.html").read_text()


def test_invalid_manifest_is_refused(tmp_path: Path, no_plots: None) -> None:
    m = example_manifest()
    del m["models"]
    with pytest.raises(ConfigError, match="missing required key 'models'"):
        write_report(tmp_path, m)


def test_model_cards_alone(tmp_path: Path) -> None:
    cards = write_model_cards(tmp_path, example_manifest())
    assert {n: p.name for n, p in cards.items()} == {n: model_card_filename(n) for n in ("s100", "s50", "s25")}
    assert all(p.parent == tmp_path and p.is_file() for p in cards.values())
    assert model_card_filename("a/b c") == "model_card_a_b_c.md"
    with pytest.raises(ConfigError, match="no size 'nope'"):
        render_model_card(example_manifest(), "nope")


def test_single_student_history_and_absolute_paths(tmp_path: Path) -> None:
    """Histories may hold one accuracy per epoch; files may be stored as absolute paths."""
    m = example_manifest()
    m["training"]["history"] = [{"epoch": e, "loss": 1.0 / e, "val_acc": 0.5 + 0.05 * e} for e in range(1, 5)]
    m["models"][0]["files"]["onnx"] = str(tmp_path / "s100.onnx")
    write_report(tmp_path, m)
    assert (tmp_path / "plots" / "training.png").is_file()
    html = (tmp_path / "report.html").read_text()
    assert '<a href="s100.onnx">' in html  # absolute path inside the run folder linked relatively


def test_per_group_width_ratios(tmp_path: Path, no_plots: None) -> None:
    m = example_manifest()
    m["models"][1]["ratio"] = {"stem": 0.5, "block1": 0.25}
    write_report(tmp_path, m)
    assert "| 0.375 (mean) |" in (tmp_path / "report.md").read_text()
    assert "width ratio 0.375 (mean of 2 channel groups)" in (tmp_path / "model_card_s50.md").read_text()


def test_predicted_latency_shown_beside_measured():
    import copy

    from compressor.manifest import example_manifest
    from compressor.report._view import summary_table

    m = copy.deepcopy(example_manifest())
    prof = m["budget"]["profile"]
    for model in m["models"]:
        rep = model["latency"][prof]
        rep["measured"] = True
        rep["env"] = {**(rep.get("env") or {}), "predicted_ms": 1.25, "prediction_error": 0.1}
    table = summary_table(m)
    col = table.header.index(f"Predicted {prof}")
    assert all(row[col] == "1.250 ms (+10%)" for row in table.rows[1:])


def test_the_report_says_where_the_time_went(tmp_path: Path, no_plots: None) -> None:
    manifest = example_manifest()
    manifest["stages"] = {"intake": 2.0, "calibration": 0.0, "teacher": 3.0, "search": 12.0, "distill": 48.0,
                          "export": 15.0}
    manifest["search"] = {**(manifest.get("search") or {}), "n_trials": 24}
    manifest["seconds"] = 80.0
    manifest["training"] = {**manifest.get("training", {}), "train_seconds": 48.0,
                            "history": [{"epoch": e, "val_acc": 0.5} for e in (1, 2, 3, 4)]}
    write_report(tmp_path, manifest)
    md = (tmp_path / "report.md").read_text()
    assert "## Where the time went" in md and "Wall time 80 s." in md
    assert "| distill | 48.0 | 60% | 4 epochs of nested distillation, 12.0 s each |" in md
    assert "| search | 12.0 | 15% | 24 candidates ranked without training, 500 ms each |" in md
    assert "| calibration | 0.0 | 0% | latency predictor taken from the cache |" in md
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Where the time went</h2>" in html and "<td>distill</td><td>48.0</td><td>60%</td>" in html


def test_a_budget_far_beyond_every_point_is_named_not_drawn(tmp_path: Path) -> None:
    """The caption says where the budget is: a dashed line only where one is drawn."""
    from compressor.report.plots import accuracy_latency_plot

    manifest = example_manifest()
    profile = manifest["budget"]["profile"]
    near = accuracy_latency_plot(manifest, profile, tmp_path / "near")
    assert "dashed red line is the budget" in near.caption
    far = {**manifest, "budget": {**manifest["budget"], "ms": 1e4, "text": "10s"}}
    off = accuracy_latency_plot(far, profile, tmp_path / "far")
    assert "dashed red line" not in off.caption and "named at the right edge" in off.caption


def test_a_size_claimed_as_a_near_miss_is_reported_as_one(tmp_path: Path, no_plots: None) -> None:
    from compressor.report._view import claim_lines, flags

    manifest = example_manifest()
    lat = manifest["models"][0]["latency"][manifest["budget"]["profile"]]
    check = {"size": "w050", "first": lat, "second": lat, "first_ms": 1.2, "second_ms": 0.9, "margin_first": -0.2,
             "margin_second": 0.1, "holds": True, "after_miss": True}
    manifest["verification"] = [{**check, "size": "w075", "second_ms": 1.3, "holds": False}, check]
    lines = claim_lines(manifest)
    assert any(line.startswith("w050 re-measured") and "near miss" in line and "the claim holds" in line
               for line in lines)
    assert "w075 missed the budget when first measured and not when re-measured (1.3 ms); it was not selected" \
        in flags(manifest)
    write_report(tmp_path, manifest)  # the schema takes the record
    assert "near miss" in (tmp_path / "report.md").read_text()
