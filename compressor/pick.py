"""Selection: the most accurate size that fits a budget. The run and serving both choose here.

`rank` is the rule (the pipeline's selection and `compress pick` both call it):
a size is eligible when its ONNX parity check passed and it has a latency on the
budget's profile; it fits when `Budget.fits` says so (the statistic plus its
measured spread is within the budget); among fitting sizes the most accurate
wins, ties going to the faster. Whether a figure was measured or predicted is
passed on (`Pick.measured`), never hidden.

At serving time this reads only the run folder's manifest (no torch model, no
data), so a serving process can call it at start-up:

    pick, session = load_session("runs/x", "3ms", "host-cpu-1t")
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .budget import Budget, parse_budget
from .errors import BudgetNotMetError, ConfigError
from .manifest import read_manifest, resolve_path
from .types import LatencyReport

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["Option", "Pick", "cmd_pick", "load_session", "pick", "pick_from_manifest", "rank"]


@dataclass(frozen=True)
class Option:
    """One size as selection sees it."""

    name: str
    accuracy: float
    parity_ok: bool
    latency: LatencyReport | None  # on the budget's profile; None when the size has none there


def rank(options: Iterable[Option], budget: Budget, *, allow_flagged: bool = False) -> list[Option]:
    """The sizes that fit `budget`, best first: most accurate, then fastest, then by name."""
    fitting = [o for o in options if o.latency is not None and (allow_flagged or o.parity_ok)
               and budget.fits(o.latency)]
    return sorted(fitting, key=lambda o: (-o.accuracy, o.latency.value(budget.stat), o.name))  # type: ignore[union-attr]


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

    `budget` is a string with a unit ('3ms', '500us', '0.003s'), a fraction of the
    teacher's latency on `profile` ('0.5x'), or a number of milliseconds; `None`
    means the run's own budget, and `profile=None` the run's own profile. Sizes whose
    ONNX parity check failed are skipped unless `allow_flagged`. Raises
    `BudgetNotMetError` naming the fastest size's latency when nothing fits,
    `ConfigError` for an unknown profile or a bad budget.
    """
    run_dir = Path(run_dir)
    return pick_from_manifest(read_manifest(run_dir), run_dir, budget, profile, allow_flagged=allow_flagged)


def pick_from_manifest(manifest: Mapping[str, Any], run_dir: str | Path, budget: str | float | None = None,
                       profile: str | None = None, *, allow_flagged: bool = False) -> Pick:
    """`pick` on an already-loaded (validated) manifest."""
    profile = profile or manifest["budget"]["profile"]
    models = manifest["models"]
    on_profile = [m for m in models if profile in m["latency"]]
    if not on_profile:
        known = sorted({p for m in models for p in m["latency"]})
        raise ConfigError(f"no size has a latency on profile {profile!r}; this run has: {', '.join(known) or 'none'}")
    b = _budget(manifest, budget, profile, str(on_profile[0]["latency"][profile]["stat"]))
    options = [Option(m["name"], float(m["accuracy"]), bool(m["parity_ok"]), _judged(manifest, m, profile, b))
               for m in on_profile]
    eligible = [o for o in options if allow_flagged or o.parity_ok]
    if not eligible:
        raise BudgetNotMetError(f"every size with a latency on {profile} failed its ONNX parity check "
                                "(pass allow_flagged=True to use one anyway)")
    fitting = rank(eligible, b, allow_flagged=allow_flagged)
    if not fitting:
        fastest = min(eligible, key=lambda o: o.latency.value(b.stat))  # type: ignore[union-attr]
        r = fastest.latency
        assert r is not None
        raise BudgetNotMetError(
            f"no size meets {b} on {profile}: the fastest, {fastest.name}, takes {r.value(b.stat):.3g} ms "
            f"({b.stat}, {'measured' if r.measured else 'predicted'})"
        )
    best = fitting[0]
    assert best.latency is not None
    model = next(m for m in on_profile if m["name"] == best.name)
    return Pick(name=best.name, onnx_path=resolve_path(run_dir, model["files"]["onnx"]),
                latency_ms=best.latency.value(b.stat), accuracy=best.accuracy, measured=best.latency.measured,
                profile=profile, stat=b.stat, budget_ms=b.ms)


def _judged(manifest: Mapping[str, Any], model: Mapping[str, Any], profile: str, budget: Budget) -> LatencyReport:
    """The figure a size is judged on: its measurement, or, where the run re-measured it in a
    fresh process, the claim those measurements make (`Budget.claim`, as the run judged it)."""
    first = LatencyReport.from_dict(model["latency"][profile])
    claims = [budget.claim(first, LatencyReport.from_dict(v["second"]),
                           LatencyReport.from_dict(v["third"]) if v.get("third") else None)
              for v in manifest.get("verification", [])
              if v["size"] == model["name"] and v["second"]["profile"] == profile]
    return max([first, *claims], key=budget.upper_ms)


def options_from(sizes: Sequence[Any], profile: str) -> list[Option]:
    """Options from records with `name`, `accuracy`, `parity_ok` and `latency` (e.g. `SizeRecord`)."""
    return [Option(s.name, float(s.accuracy), bool(s.parity_ok), s.latency.get(profile)) for s in sizes]


def _budget(manifest: Mapping[str, Any], budget: str | float | None, profile: str, stat: Any) -> Budget:
    """The budget to judge with on `profile`: given, or the run's own (re-resolved on another profile)."""
    if isinstance(budget, bool):
        raise ConfigError(f"budget {budget!r} is not a latency")
    if budget is None:
        if manifest["budget"]["profile"] == profile:
            return Budget.from_dict(manifest["budget"])
        budget = str(manifest["budget"]["text"])
    if isinstance(budget, (int, float)):  # a number is milliseconds; Budget refuses one that is not positive
        return Budget(ms=float(budget), text=f"{budget:g}ms", profile=profile, stat=stat)
    teacher = manifest["teacher"]["latency"].get(profile)
    teacher_ms = float(teacher[f"{teacher['stat']}_ms"]) if teacher else None
    return parse_budget(budget).resolve(profile, stat, teacher_ms)


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
    from .manifest import read_manifest
    from .report._view import headline_label

    label = headline_label(read_manifest(run_dir))  # what `accuracy` holds: the task's headline metric
    print(f"{choice.name}: {label[:1].lower() + label[1:]} {100 * choice.accuracy:.1f}%, {choice.stat} {choice.latency_ms:.3g} ms "
          f"({source}) on {choice.profile} <= {choice.budget_ms:g} ms", file=sys.stderr)
    print(choice.onnx_path)
    return 0
