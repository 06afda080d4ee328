#!/usr/bin/env bash
# Install check: the package must work as an installed package, not only from this checkout.
#
# Builds the wheel, installs it (not editable) into a fresh venv and runs `compress` from a
# folder outside the repository, so anything the package needs at run time but does not ship
# (hardware profiles, data files, paths into the repo) fails here instead of for a user. Then
# `pip install .` (non-editable, from the source tree) into the same venv must run too.
#
# The build uses a clean copy of the source tree (tracked and untracked, not ignored, files),
# so a stale build/ or *.egg-info in the checkout cannot leak into the wheel or hide a missing
# file. pip's cache is reused; torch comes from the machine's local wheel (the exact pin in
# pyproject.toml), and the check fails if anything else was installed as torch.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
START=$SECONDS
TMP="$(mktemp -d "${TMPDIR:-/tmp}/check-wheel.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# Nothing from the checkout or the caller's environment may help the installed package.
unset PYTHONPATH COMPRESSOR_PROFILES_DIR VIRTUAL_ENV
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export COMPRESSOR_CACHE_DIR="$TMP/cache"

step() { printf '== [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { printf 'wheel check: FAILED (%ds): %s\n' "$((SECONDS - START))" "$*" >&2; exit 1; }

SRC="$TMP/src" DIST="$TMP/dist" VENV="$TMP/venv" WORK="$TMP/work"
mkdir -p "$SRC" "$DIST" "$WORK"

step "copy the source tree"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$SRC"
else
    tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude=./runs --exclude=__pycache__ -cf - . | tar -xf - -C "$SRC"
fi

step "fresh venv ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$VENV"
# pip, quiet; this machine's pip config names index folders that may not exist (one warning each)
pip_() {
    "$VENV/bin/python" -m pip -q "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

step "pip wheel --no-deps"
pip_ wheel --no-deps -w "$DIST" "$SRC"
WHEEL="$(ls "$DIST"/compressor-*.whl)"
"$VENV/bin/python" - "$WHEEL" <<'EOF' || fail "the wheel is incomplete: $WHEEL"
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
need = ["compressor/__init__.py", "compressor/py.typed", "compressor/profiles/host-cpu-1t.toml",
        f"{info}/licenses/LICENSE"]  # PEP 639: the licence text travels in the wheel
missing = [n for n in need if n not in names]
if "License-Expression: Apache-2.0" not in wheel.read(f"{info}/METADATA").decode().splitlines():
    missing.append("License-Expression: Apache-2.0 in METADATA")
print(f"   {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, "
      f"{sum(n.startswith('compressor/profiles/') for n in names)} profiles")
sys.exit(f"   missing from the wheel: {', '.join(missing)}" if missing else 0)
EOF

step "pip install the wheel (with its dependencies)"
pip_ install "$WHEEL"

# The installed package, not the checkout, must be what runs.
where() {
    (cd "$WORK" && "$VENV/bin/python" -c '
import compressor, torch
from compressor.hardware.profiles import profiles_dir
print(compressor.__file__, profiles_dir(), torch.__version__, sep="\n")')
}
check_installed() {
    local out pkg profiles torch_version
    out="$(where)" || fail "cannot import the installed package"
    { read -r pkg; read -r profiles; read -r torch_version; } <<<"$out"
    echo "   compressor: $pkg"
    echo "   profiles:   $profiles"
    echo "   torch:      $torch_version"
    case "$pkg" in "$VENV"/*) ;; *) fail "compressor is imported from $pkg, not from the venv" ;; esac
    case "$profiles" in "$VENV"/*) ;; *) fail "profiles are read from $profiles, not from the venv" ;; esac
    case "$torch_version" in 2.13.0 | 2.13.0+cpu) ;; *) fail "torch $torch_version was installed, not the local 2.13.0 wheel" ;; esac
}
check_installed

cd "$WORK"
COMPRESS="$VENV/bin/compress"
if "$COMPRESS" --help | grep -q -- '--version'; then
    step "compress --version"
    "$COMPRESS" --version
else
    step "compress --help (no --version yet)"
    "$COMPRESS" --help >/dev/null
fi

step "compress profiles"
"$COMPRESS" profiles | tee "$TMP/profiles.txt"
grep -q host-cpu-1t "$TMP/profiles.txt" || fail "compress profiles does not list host-cpu-1t"

step "compress example-teacher --epochs 1"
"$COMPRESS" example-teacher --out t.pt --epochs 1

step "compress: short run (budget 50ms, 2 trials, 1 epoch)"
rc=0
"$COMPRESS" --teacher t.pt --budget 50ms --trials 2 --epochs 1 --calibration-models 6 \
    --no-progress --out run || rc=$?
# 0: a size meets the budget; 3: none does, still a finished run
[ "$rc" = 0 ] || [ "$rc" = 3 ] || fail "compress exited with $rc"
[ -f run/manifest.json ] || fail "the run wrote no run/manifest.json"
echo "   exit code $rc, run/manifest.json written"

step "pip install . (non-editable, from the source tree) into the same venv"
pip_ uninstall -y compressor
(cd "$SRC" && pip_ install .)
check_installed
"$COMPRESS" profiles >"$TMP/profiles2.txt" || fail "compress profiles failed after pip install ."
grep -q host-cpu-1t "$TMP/profiles2.txt" || fail "compress profiles does not list host-cpu-1t after pip install ."

echo "wheel check: ok ($((SECONDS - START))s)"
