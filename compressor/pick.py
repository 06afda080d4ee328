"""Choose a size at serving time: the most accurate one that fits a latency budget.

Reads only the run folder's manifest (no torch model, no data), so a serving
process can call it at start-up:

    pick, session = load_session("runs/x", "3ms", "host-cpu-1t")

A size is eligible on a profile when it has a latency figure there and its ONNX
parity check passed; its figure is compared in the statistic it was recorded
with (the profile's `stat`, e.g. p50). Among eligible sizes within the budget the
most accurate wins, ties going to the faster. Whether that figure was measured
or predicted is passed on (`Pick.measured`), never hidden.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import BudgetNotMetError, ConfigError
from .manifest import read_manifest, resolve_path
from .types import Budget

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["Pick", "cmd_pick", "load_session", "pick", "pick_from_manifest"]


@dataclass(frozen=True)
class Pick:
    """The chosen size and the figures it was chosen on."""

    name: str
    onnx_path: Path
    latency_ms: float
    accuracy: float
    measured: bool
    profile: str = ""
    stat: str = "p50"
    budget_ms: float = 0.0


def pick(run_dir: str | Path, budget: str | float | None = None, profile: str | None = None, *,
         allow_flagged: bool = False) -> Pick:
    """Most accurate size of `run_dir` whose latency on `profile` is within `budget`.

    `budget` is a string with a unit ('3ms', '500us', '0.003s') or a number of
    milliseconds; `None` means the run's own budget, and `profile=None` the run's
    own profile. Sizes whose ONNX parity check failed are skipped unless
    `allow_flagged`. Raises `BudgetNotMetError` naming the fastest size's latency
    when nothing fits, `ConfigError` for an unknown profile or a bad budget.
    """
    run_dir = Path(run_dir)
    return pick_from_manifest(read_manifest(run_dir), run_dir, budget, profile, allow_flagged=allow_flagged)


def pick_from_manifest(manifest: Mapping[str, Any], run_dir: str | Path, budget: str | float | None = None,
                       profile: str | None = None, *, allow_flagged: bool = False) -> Pick:
    """`pick` on an already-loaded (validated) manifest."""
    b = _budget(budget) if budget is not None else Budget(ms=float(manifest["budget"]["ms"]),
                                                           text=str(manifest["budget"]["text"]))
    profile = profile or manifest["budget"]["profile"]
    models = manifest["models"]
    on_profile = [m for m in models if profile in m["latency"]]
    if not on_profile:
        known = sorted({p for m in models for p in m["latency"]})
        raise ConfigError(f"no size has a latency on profile {profile!r}; this run has: {', '.join(known) or 'none'}")
    eligible = [m for m in on_profile if allow_flagged or m["parity_ok"]]
    if not eligible:
        raise BudgetNotMetError(f"every size with a latency on {profile} failed its ONNX parity check "
                                "(pass allow_flagged=True to use one anyway)")

    def ms(m: Mapping[str, Any]) -> float:
        report = m["latency"][profile]
        return float(report[f"{report['stat']}_ms"])

    fits = [m for m in eligible if ms(m) <= b.ms]
    if not fits:
        fastest = min(eligible, key=ms)
        r = fastest["latency"][profile]
        raise BudgetNotMetError(
            f"no size meets {b.text} on {profile}: the fastest, {fastest['name']}, takes {ms(fastest):.3g} ms "
            f"({r['stat']}, {'measured' if r['measured'] else 'predicted'})"
        )
    best = max(fits, key=lambda m: (m["accuracy"], -ms(m)))
    report = best["latency"][profile]
    return Pick(name=best["name"], onnx_path=resolve_path(run_dir, best["files"]["onnx"]), latency_ms=ms(best),
                accuracy=float(best["accuracy"]), measured=bool(report["measured"]), profile=profile,
                stat=str(report["stat"]), budget_ms=b.ms)


def load_session(run_dir: str | Path, budget: str | float | None = None, profile: str | None = None, *,
                 providers: list[str] | None = None,
                 session_options: onnxruntime.SessionOptions | None = None,
                 ) -> tuple[Pick, onnxruntime.InferenceSession]:
    """`pick`, then open the chosen ONNX file in an ONNX Runtime session (CPU by default)."""
    import onnxruntime as ort

    choice = pick(run_dir, budget, profile)
    if not choice.onnx_path.is_file():
        raise ConfigError(f"{choice.name}: ONNX file {choice.onnx_path} is missing from the run folder")
    session = ort.InferenceSession(str(choice.onnx_path), sess_options=session_options,
                                   providers=providers or ["CPUExecutionProvider"])
    return choice, session


def cmd_pick(run_dir: str | Path, budget: str | float | None, profile: str | None) -> int:
    """`compress pick RUN --budget 3ms --profile host-cpu-1t`.

    Prints the chosen ONNX file's path alone on stdout (so `$(compress pick ...)`
    works in scripts) and what was chosen, and why, on stderr. Errors propagate as
    `CompressorError`s for the CLI to print in one line with their exit code.
    """
    choice = pick(run_dir, budget, profile)
    if not choice.onnx_path.is_file():
        raise ConfigError(f"{choice.name}: ONNX file {choice.onnx_path} is missing from the run folder")
    source = "measured" if choice.measured else "predicted"
    print(f"{choice.name}: accuracy {100 * choice.accuracy:.1f}%, {choice.stat} {choice.latency_ms:.3g} ms "
          f"({source}) on {choice.profile} <= {choice.budget_ms:g} ms", file=sys.stderr)
    print(choice.onnx_path)
    return 0


def _budget(budget: str | float) -> Budget:
    """A number is milliseconds; a string goes through `compressor.config.parse_budget`."""
    if isinstance(budget, bool):
        raise ConfigError(f"budget {budget!r} is not a latency")
    if isinstance(budget, (int, float)):
        if not budget > 0:
            raise ConfigError(f"budget must be positive, got {budget} ms")
        return Budget(ms=float(budget), text=f"{budget:g}ms")
    from .config import parse_budget  # lazy: serving code should not import the training config

    return parse_budget(budget)

