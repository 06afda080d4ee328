"""INT8 against fp32 for every size of a finished run (e.g. the demo), from its manifest.

    make demo                                        # compress ... --budget 0.5x --int8
    python benchmarks/int8_from_run.py runs/<run>    # writes benchmarks/results/int8_demo.md

The run's own figures: each size's fp32 ONNX accuracy, its INT8 copy's accuracy and top-1
agreement with fp32 on the validation split, the settings chosen for the CPU class and the
latency ratio on the budget's profile. The goal per size: agreement >= 0.99 and accuracy
within 1 point of fp32.
"""
from __future__ import annotations

import argparse
import re
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.manifest import read_manifest  # noqa: E402


FOOT = ("Accuracy and agreement are on the run's validation split (360 digits images). A latency ratio "
        "above 1x means INT8 is faster; a copy that is not faster is reported as such and never selected.")


def _class_blocks(path: Path) -> dict[str, str]:
    """The per-class tables already in `path`: {class: its subsection}."""
    if not path.is_file():
        return {}
    text = path.read_text().replace(FOOT, "")
    parts = re.split(r"^(?=### CPU class `)", text, flags=re.M)[1:]
    return {re.match(r"### CPU class `([^`]+)`", b).group(1): b.strip() for b in parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_demo.md")
    args = ap.parse_args()
    m = read_manifest(args.run_dir)
    sizes = [s for s in m["models"] if s.get("int8")]
    if not sizes:
        sys.exit(f"{args.run_dir}: no INT8 copies (run compress with --int8)")
    settings = sizes[0]["int8"].get("settings", {})
    profile = m["budget"]["profile"]
    rows = ["| size | params | fp32 acc | INT8 acc | drop (points) | INT8/fp32 agreement | fp32/INT8 latency "
            f"({profile}) | goal met |", "|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        q = s["int8"]
        drop = 100 * (s["accuracy"] - q["accuracy"])
        ok = q["agreement_with_fp32"] >= 0.99 and drop <= 1.0
        speed = f"{q['speedup']:.2f}x" if q.get("speedup") else "—"
        rows.append(f"| {s['name']} | {s['params']:,} | {100 * s['accuracy']:.1f}% | {100 * q['accuracy']:.1f}% | "
                    f"{drop:+.1f} | {100 * q['agreement_with_fp32']:.1f}% | {speed} | {'yes' if ok else 'NO'} |")
    cls = settings.get("cpu_class", "?")
    block = "\n".join([
        f"### CPU class `{cls}`",
        "",
        f"Command: `make demo` (`compress --teacher teacher.pt --budget {m['budget']['text']} --int8`), then "
        f"`python benchmarks/int8_from_run.py {args.run_dir}`.",
        "",
        f"Run created {m['created']} (table written {date.today().isoformat()}): {settings.get('reason', '')}",
        "",
        *rows,
    ])
    blocks = {**_class_blocks(args.out), cls: block}  # this class replaced, the others kept
    text = "\n\n".join([
        "## INT8 on every size of the demo",
        "INT8 settings follow the CPU that runs the model, so each CPU class has its own table, taken on a "
        "CPU of that class; a run replaces only its own class's table.",
        *(blocks[k] for k in sorted(blocks, key=lambda k: k != cls)),
        FOOT,
    ]) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
