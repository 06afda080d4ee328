"""Does `torch.compile` pay for a `compress` run's training on the CPU? One training step of the example
teacher (batch 64, 32x32, channels-last, the forward pass under the precision `auto` picks here):
eager against compiled (inductor), each in a fresh process, alternated; the compiled process's first
step holds the compilation, once with an empty inductor cache (a machine's first run) and once with
the cache the cold run left (a later run of the same shapes). Writes benchmarks/results/compile_step.md.

    .venv/bin/python benchmarks/bench_compile_step.py --rounds 2
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CHILD = r"""
import json, statistics, sys, time, torch
from torch.nn import functional as F
from compressor.example import ExampleCNN
from compressor.distill.precision import resolve_precision, training_autocast
torch.manual_seed(0)
m = ExampleCNN(1, 10, (40, 80, 160)).to(memory_format=torch.channels_last)
x = torch.randn(64, 1, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
precision, _ = resolve_precision("auto", "cpu", [(m, x)])
opt = torch.optim.AdamW(m.parameters(), 1e-3)
fwd = torch.compile(m) if sys.argv[1] == "compiled" else m
times = []
for _ in range(40):
    t = time.perf_counter()
    with training_autocast(precision):
        out = fwd(x).float()
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
print(json.dumps({"first_s": times[0], "median_ms": 1000 * statistics.median(times[10:]), "precision": precision}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "compile_step.md")
    args = ap.parse_args()
    rows = []
    for r in range(args.rounds):
        cache = tempfile.mkdtemp(prefix="inductor-")
        for mode, label in (("eager", "eager"), ("compiled", "compiled, empty cache"), ("compiled", "compiled, cached")):
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True,
                                 check=True, env=env)
            fig = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((r + 1, label, fig))
            print(r + 1, label, fig, flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    eager = [f["median_ms"] for _, m, f in rows if m == "eager"]
    comp = [f["median_ms"] for _, m, f in rows if m.startswith("compiled")]
    first = [f["first_s"] for _, m, f in rows if m == "compiled, empty cache"]
    warm = [f["first_s"] for _, m, f in rows if m == "compiled, cached"]
    saved_ms = statistics.fmean(eager) - statistics.fmean(comp)
    lines = ["## torch.compile for a training step on the CPU", "",
             f"Command: `python benchmarks/bench_compile_step.py --rounds {args.rounds}`", "",
             f"One training step of the example teacher (batch 64, 32x32, channels-last, forward in "
             f"{rows[0][2]['precision']} as `auto` picks on this CPU: {cpu}, 2 cores, torch {_torch()}), 40 steps per "
             "fresh process, median of the last 30; the compiled process's first step holds inductor's compilation.", "",
             "| round | mode | first step s | step ms (median) |", "|---:|---|---:|---:|"]
    lines += [f"| {r} | {m} | {f['first_s']:.1f} | {f['median_ms']:.1f} |" for r, m, f in rows]
    ratio = statistics.fmean(comp) / statistics.fmean(eager)
    payback = (f"at that saving it would take {statistics.fmean(first) / (saved_ms / 1000):.0f} steps of one "
               "network to win back one first-run compilation" if saved_ms > 0 else "no step is saved to win it back")
    lines += ["", f"Reading: compiled steps take {ratio:.2f}x the eager time (mean of the rounds; the rounds' "
              f"eager steps alone spread {min(eager):.0f}-{max(eager):.0f} ms on this shared machine), and "
              f"compiling the one network took {statistics.fmean(first):.0f} s with an empty cache "
              f"({statistics.fmean(warm):.1f} s from the cache). The demo's distillation runs 12 epochs of 22 steps, "
              "each step the TA and two nested sizes (each its own graph: the sizes gather different channel "
              f"counts) and the teacher; {payback}, against 264 steps in the whole run. `compress` does not "
              "compile.", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


def _torch() -> str:
    import torch
    return torch.__version__


if __name__ == "__main__":
    main()
