"""The latency budget: parsed once, judged in one place.

A budget is what the user typed (``5ms``, ``800us``, ``0.5x``) made into a value
that knows everything needed to judge a latency against it: the milliseconds, the
profile it applies to and the statistic (p50/p90/p99) compared. Every stage that
asks "does this fit?" (search, size choice, selection, `pick`, the report) asks
`Budget.fits`, so the rule lives here and nowhere else.

Two forms:

* absolute, ``5ms`` / ``800us`` / ``0.01s``: the default form;
* relative, ``0.5x``: a fraction of the teacher's latency on the same profile,
  resolved once that latency is known (`BudgetSpec.resolve`). It asks for the
  same compression on a fast machine and a slow one.

Standard library only: `pick` at serving time imports this without torch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol

from .errors import ConfigError

__all__ = ["Budget", "BudgetSpec", "Stat", "parse_budget"]

Stat = Literal["p50", "p90", "p99"]

_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_ABSOLUTE_RE = re.compile(rf"^\s*{_NUMBER}\s*(us|µs|ms|s)\s*$")
_RELATIVE_RE = re.compile(rf"^\s*{_NUMBER}\s*[x×]\s*$")
_HELP = "write a latency with a unit (5ms, 800us, 0.01s) or a fraction of the teacher's latency (0.5x)"


class _Timed(Protocol):
    """What a budget is judged against: a `LatencyReport` (measured or predicted)."""

    stat: str
    measured: bool
    spread_ms: float

    def value(self, stat: str | None = None) -> float: ...

    def confirmed_by(self, other: Any) -> Any: ...


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user wrote it, validated but not yet tied to a profile.

    Exactly one of `ms` (absolute) and `factor` (relative to the teacher) is set.
    """

    text: str
    ms: float | None = None
    factor: float | None = None

    @property
    def relative(self) -> bool:
        return self.factor is not None

    def resolve(self, profile: str, stat: Stat, teacher_ms: float | None = None) -> "Budget":
        """The budget on `profile`; a relative one needs the teacher's latency there."""
        if self.factor is None:
            assert self.ms is not None
            return Budget(ms=self.ms, text=self.text, profile=profile, stat=stat)
        if teacher_ms is None or not math.isfinite(teacher_ms) or teacher_ms <= 0:
            raise ConfigError(f"budget {self.text} is relative to the teacher's latency, which could not be "
                              f"measured or predicted on {profile}; give an absolute budget such as 5ms")
        return Budget(ms=self.factor * teacher_ms, text=self.text, profile=profile, stat=stat,
                      factor=self.factor, teacher_ms=teacher_ms)

    def __str__(self) -> str:
        return self.text


def parse_budget(text: str | float | int) -> BudgetSpec:
    """'5ms' -> 5 ms; '0.5x' -> half the teacher's latency. A bare number is refused: units matter."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ConfigError(f"budget {text!r} is not a latency; {_HELP}")
    raw = str(text).strip()
    if isinstance(text, (int, float)) or re.fullmatch(rf"\s*{_NUMBER}\s*", raw):
        raise ConfigError(f"budget {raw!r} has no unit; write e.g. '{raw}ms' (units: us, ms, s) or '{raw}x'")
    if m := _ABSOLUTE_RE.match(raw):
        ms = float(m.group(1)) * _UNITS_MS[m.group(2)]
        if not math.isfinite(ms):
            raise ConfigError(f"budget {raw!r} is not a finite latency")
        if not ms > 0:
            raise ConfigError(f"budget {raw!r} must be a positive latency")
        return BudgetSpec(text=raw, ms=ms)
    if m := _RELATIVE_RE.match(raw):
        factor = float(m.group(1))
        if not (math.isfinite(factor) and factor > 0):
            raise ConfigError(f"budget {raw!r} must be a positive fraction of the teacher's latency")
        return BudgetSpec(text=raw, factor=factor)
    raise ConfigError(f"cannot parse budget {raw!r}; {_HELP}")


@dataclass(frozen=True)
class Budget:
    """A resolved budget: `ms` of the `stat` statistic on `profile`."""

    ms: float
    text: str
    profile: str
    stat: Stat = "p50"
    factor: float | None = None  # relative budgets: ms = factor x teacher_ms
    teacher_ms: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.ms, (int, float)) and math.isfinite(self.ms) and self.ms > 0):
            raise ConfigError(f"budget {self.text!r} must be a positive latency, got {self.ms!r} ms")

    def upper_ms(self, latency: _Timed | float) -> float:
        """The latency a budget is judged on: the statistic plus its measured spread.

        A measurement is a sample: its statistic moves between runs by about its own
        spread (see `hardware.timing`), so a size whose statistic sits under the budget
        by less than that meets it only by chance. Predictions carry no spread.
        """
        if isinstance(latency, (int, float)):
            return float(latency)
        return latency.value(self.stat) + max(0.0, float(getattr(latency, "spread_ms", 0.0) or 0.0))

    def fits(self, latency: _Timed | float) -> bool:
        """THE budget rule: the statistic plus its spread is at most the budget."""
        return self.upper_ms(latency) <= self.ms

    def claim(self, first: _Timed, second: _Timed, third: _Timed | None = None) -> _Timed:
        """The figure a claim on this budget is judged on, from the measurement selection used and
        independent re-measurements of the same file, each in a fresh process.

        Two: the second, with the larger of the two spreads and their distance as its spread
        (`LatencyReport.confirmed_by`). A third is taken when those two do not make the claim
        (`pipeline.stage_select`): it is judged with either earlier one, and the pair that agrees
        best decides. On a machine with slow spells (BENCHMARKS.md "Measurement stability": two
        states 1.8x apart for seconds at a time) two measurements that fall in different states
        disagree by far more than either's spread, and the two-measurement rule then refuses even a
        size whose every measurement fits; the third shows which of the two was the spell. The third
        must agree with one of them, so one lucky fast figure alone never makes a claim."""
        pairs = [second.confirmed_by(first)]
        if third is not None:
            pairs += [third.confirmed_by(first), third.confirmed_by(second)]
        return min(pairs, key=self.upper_ms)

    def margin(self, latency: _Timed | float) -> float:
        """Headroom as a fraction of the budget (0.2 = 20 % under, -0.1 = 10 % over), on the statistic."""
        value = float(latency) if isinstance(latency, (int, float)) else latency.value(self.stat)
        return (self.ms - value) / self.ms

    def describe(self) -> str:
        """'400us p50 on host-cpu-1t' or '0.5x (0.37 ms) p50 on host-cpu-1t'."""
        text = f"{self.text} ({self.ms:.3g} ms)" if self.factor is not None else self.text
        return f"{text} {self.stat} on {self.profile}"

    def __str__(self) -> str:
        return self.text if self.factor is None else f"{self.text} ({self.ms:.3g} ms)"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "ms": self.ms, "profile": self.profile, "stat": self.stat}
        if self.factor is not None:
            out.update(factor=self.factor, teacher_ms=self.teacher_ms)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Budget":
        return cls(ms=float(d["ms"]), text=str(d["text"]), profile=str(d["profile"]), stat=d.get("stat", "p50"),
                   factor=d.get("factor"), teacher_ms=d.get("teacher_ms"))
