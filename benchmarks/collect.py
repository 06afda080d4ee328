"""Merge benchmarks/results/*.md into BENCHMARKS.md (each result file holds its own command)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["zoo", "zoo_steady", "rollback", "zoo_guard", "zoo_depth", "zoo_vit", "zoo_plain", "zoo_scratch", "zoo_recal", "zoo_rerun", "zoo_patchify", "zoo_patchify_small", "zoo_rest", "zoo_ta", "latency_predictor", "predictor_zoo", "calibration_set", "measure_stability", "search_pick", "search_pick_e2e", "proxy_correlation", "proxy_cost", "nested",
         "nested_transformer", "lm_matta_width", "lm_matta_order", "lm_matta_6l", "lm_matta", "export_speed", "int8", "int8_demo", "budget_claim", "claim_rule", "faults_crash",
         "faults_corrupt", "faults", "faults_concurrency", "search_workers", "search_workers_journal", "ddp",
         "pipeline_time_steady", "pipeline_time_calib", "pipeline_time_anchor", "pipeline_time", "pipeline_time_sizes", "pipeline_time_chain", "pipeline_time_bf16", "pipeline_time_bf16_avx512", "pipeline_time_child", "pipeline_time_issue", "pipeline_time_validation", "demo_fresh_clone", "demo_fresh_clone_amd", "compile_step", "teacher_views", "pipeline_time_remeasure", "export_time", "epochs", "pipeline_time_plateau", "early_stop", "cut_epochs", "cut_epochs_demo", "caught_up", "zoo_trials", "zoo_trials_depth", "zoo_trials_depth_seeds"]

HEADER = """# Benchmarks

Figures produced by the scripts in `benchmarks/`; each section names the command that made it.
Machine: the development host (2 CPU cores, no GPU) unless a section says otherwise. Regenerate a
section by running its command, then `python benchmarks/collect.py`.
"""


def _nest(text: str) -> str:
    """A result file that opens with a top-level heading is nested one level under BENCHMARKS.md."""
    if not text.startswith("# "):
        return text
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    files = {p.stem: p for p in results.glob("*.md")}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    body = [HEADER] + [_nest(files[n].read_text().strip()) + "\n" for n in names]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(body))
    print(f"BENCHMARKS.md: {len(names)} sections ({', '.join(names)})")


if __name__ == "__main__":
    main()
