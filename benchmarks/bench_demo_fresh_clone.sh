#!/usr/bin/env bash
# `make demo` from a fresh clone, as a new user runs it, for two commits alternated ROUNDS times.
#
#   bash benchmarks/bench_demo_fresh_clone.sh OLD_REV NEW_REV [ROUNDS]
#
# Each run clones this repository into a temporary folder, checks out the commit and runs
# `make demo` with an empty latency-calibration cache (COMPRESSOR_CACHE_DIR), as on a fresh
# machine; uv's package cache stays warm, as for any second project on a machine. Prints the
# wall time of `make demo`, the example teacher's training time, the `compress` stages from the
# manifest, and the selected size and its accuracy.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OLD="$1" NEW="$2" ROUNDS="${3:-2}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/demo-fresh.XXXXXX")"
for round in $(seq 1 "$ROUNDS"); do
  for rev in "$OLD" "$NEW"; do
    d="$WORK/$rev-$round"
    git clone -q "$REPO" "$d" && git -C "$d" checkout -q "$(git -C "$REPO" rev-parse "$rev")"
    start=$(date +%s.%N)
    (cd "$d" && COMPRESSOR_CACHE_DIR="$(mktemp -d)" make demo > demo.log 2>&1); rc=$?
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    teacher=$(grep -o "accuracy [0-9.]*, [0-9]* s" "$d/demo.log" | head -1)
    stats=$(python3 - "$d" <<'PY'
import glob, json, sys
m = json.load(open(sorted(glob.glob(sys.argv[1] + "/runs/*/manifest.json"))[-1]))
sel = m["selected"]
acc = next((s["accuracy"] for s in m["models"] if s["name"] == sel), None)
stages = " ".join(f"{k} {v:.1f}" for k, v in m["stages"].items() if v >= 0.5)
print(f"compress {m['seconds']:.0f} s ({stages}); selected {sel} {acc if acc is None else round(100 * acc, 1)} %; "
      f"budget {m['budget']['ms']:.3f} ms")
PY
)
    printf '%s round %s: make demo %.0f s, exit %s; teacher (%s); %s\n' "$rev" "$round" "$wall" "$rc" "$teacher" "$stats"
  done
done
rm -rf "$WORK"
