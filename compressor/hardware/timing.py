"""The timing loop every backend shares: warm up, time, summarise, judge the noise.

A backend only has to provide a *timed run*: a function that runs the model once
and returns how long that took, in seconds, by whatever clock is right for the
device (a host clock for CPUs; CUDA events for GPUs, whose launches return
before the work is done). Everything else — how long to warm up, how many runs
to time, which statistics to report and what to do on a noisy machine — lives
here, once, so the CPU and GPU figures mean the same thing and the policy can be
tested with a fake run that returns fixed timings.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..types import HardwareProfile, LatencyReport

__all__ = ["NOISY_COV", "MAX_SAMPLES", "Samples", "TimedRun", "budget_spread", "collect", "measure_timed_run", "statistic_spread",
           "summarize"]

TimedRun = Callable[[], float]
"""Runs the model once and returns the duration of that run in seconds."""

# Coefficient of variation above which a series counts as noisy. On a quiet
# machine small CPU models time at 1-5 %; a neighbour's burst shows as 10 % and up.
NOISY_COV = 0.10
# A safety cap for very fast models: 100k samples of a 5 us model is 0.5 s of
# work and plenty for a p99; past that, more samples only cost memory.
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class Samples:
    """Durations of the timed runs (seconds) and what the warm-up did."""

    times_s: np.ndarray
    warmup_runs: int
    warmup_s: float
    wall_s: float  # wall-clock time of the timed phase, overheads included


class _Bar:
    """A rich progress bar over the timed runs, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      TextColumn("{task.completed} runs"), TimeElapsedColumn(),
                                      transient=True)
            self._progress.start()
            self._task = self._progress.add_task(label, total=total)

    def update(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def collect(timed_run: TimedRun, *, warmup_runs: int, warmup_seconds: float, repeats: int,
            min_seconds: float, progress: bool = False, label: str = "timing") -> Samples:
    """Warm up for at least `warmup_runs` runs AND `warmup_seconds`, then time at
    least `repeats` runs AND `min_seconds` (both by wall clock, as trtexec does).

    Warming up by count alone is not enough: caches, the allocator, thread pools
    and CPU frequency settle over time, not over a number of calls.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 but got {repeats}.")
    clock = time.perf_counter
    start = clock()
    done = 0
    while done < warmup_runs or clock() - start < warmup_seconds:
        timed_run()
        done += 1
        if done >= MAX_SAMPLES:
            break
    warmup_s = clock() - start

    times: list[float] = []
    bar = _Bar(progress, repeats, label)
    start = clock()
    try:
        while len(times) < repeats or (clock() - start < min_seconds and len(times) < MAX_SAMPLES):
            times.append(float(timed_run()))
            if len(times) % 16 == 0:
                bar.update(len(times))
    finally:
        bar.close()
    return Samples(times_s=np.asarray(times, dtype=np.float64), warmup_runs=done,
                   warmup_s=warmup_s, wall_s=clock() - start)


def summarize(samples: Samples, profile: HardwareProfile, env: Mapping[str, Any] | None = None,
              warnings: tuple[str, ...] = ()) -> LatencyReport:
    """Percentiles, mean, std and coefficient of variation of one series, in ms.

    `env` also gets the robust CoV (1.4826 x median absolute deviation / median,
    which equals the CoV for normal data but ignores a few huge outliers) and the
    share of runs slower than 3x the median.
    """
    ms = samples.times_s * 1e3
    if ms.size == 0 or not np.all(np.isfinite(ms)) or np.any(ms < 0):
        raise ValueError("timed runs must return finite, non-negative durations.")
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    cov = std / mean if mean > 0 else 0.0
    robust_cov = 1.4826 * float(np.median(np.abs(ms - p50))) / p50 if p50 > 0 else 0.0
    full_env = {"warmup_runs": samples.warmup_runs, "warmup_s": round(samples.warmup_s, 4),
                "timed_s": round(samples.wall_s, 4), "robust_cov": round(robust_cov, 4),
                "outlier_share": round(float(np.mean(ms > 3 * p50)), 4), **(env or {})}
    return LatencyReport(profile=profile.name, stat=profile.stat, p50_ms=p50, p90_ms=p90, p99_ms=p99,
                         mean_ms=mean, std_ms=std, cov=cov, samples=int(ms.size), measured=True,
                         batch_size=profile.batch_size, env=full_env, warnings=warnings,
                         spread_ms=statistic_spread(ms, profile.stat))


_QUANTILES = {"p50": 50, "p90": 90, "p99": 99}
SPREAD_BLOCKS = 5


def statistic_spread(ms: np.ndarray, stat: str) -> float:
    """How far `stat` of this series would move if the model were measured again (ms).

    The timed runs are cut, in time order, into `SPREAD_BLOCKS` consecutive blocks
    and the statistic is taken on each: half the range of those block statistics is
    how much it drifted within this measurement (frequency changes, a neighbour's
    burst). It does not see what differs between processes (allocation, caches), so
    a claim is also checked by a second, independent measurement
    (`LatencyReport.confirmed_by`). Series too
    short for blocks fall back to twice the median's standard error
    (1.2533 x robust sigma / sqrt(n)).
    """
    q = _QUANTILES[stat]
    per_block = len(ms) // SPREAD_BLOCKS
    # a block needs enough runs for its statistic to exist: ~10 for a median, 1/(1-q) for a tail
    if per_block >= max(10, int(round(1 / (1 - q / 100))) * 2):
        blocks = [np.percentile(ms[i * per_block:(i + 1) * per_block], q) for i in range(SPREAD_BLOCKS)]
        return float(max(blocks) - min(blocks)) / 2
    sigma = 1.4826 * float(np.median(np.abs(ms - np.median(ms))))
    return 2 * 1.2533 * sigma / max(1.0, float(np.sqrt(len(ms))))


def budget_spread(report: LatencyReport) -> float:
    """The spread of a series as its budget statistic sees it.

    A median ignores a few slow runs, so for p50 it is the body's spread (the
    robust CoV); a tail statistic (p90, p99) moves with every slow run, so for
    those it is the whole series' CoV.
    """
    return float(report.env["robust_cov"]) if report.stat == "p50" else report.cov


def measure_timed_run(timed_run: TimedRun, profile: HardwareProfile, env: Mapping[str, Any] | None = None,
                      progress: bool = False, noisy_cov: float = NOISY_COV) -> LatencyReport:
    """Time `timed_run` as the profile says; when the series is too noisy for the
    budget statistic, measure again.

    Interference from other processes only ever adds time, and it comes in
    bursts. A series whose spread, as the budget statistic sees it
    (`budget_spread`), exceeds `noisy_cov` is measured once more with twice the
    runs and twice the time, and the series whose *body* is tighter (lower robust
    CoV) is reported, with a warning that says which of two things happened: a
    few outliers (interrupts, preemption) that inflate the mean and std but leave
    the median alone, or a machine too busy to trust anything but the median.
    A p50 series whose spread is only outliers is not measured again (a second
    series would report the same median; on a shared machine that was half of
    all timing): it carries the outlier warning instead.
    """
    first = summarize(collect(timed_run, warmup_runs=profile.warmup_runs,
                              warmup_seconds=profile.warmup_seconds, repeats=profile.repeats,
                              min_seconds=profile.min_seconds, progress=progress, label=profile.name),
                      profile, env)
    if budget_spread(first) <= noisy_cov:
        if first.cov <= noisy_cov:
            return first
        note = (f"CoV {first.cov:.1%} from outliers ({first.env['outlier_share']:.1%} of runs over 3x the "
                f"median: interrupts or other processes; robust CoV {first.env['robust_cov']:.1%}); p50 is "
                f"unaffected, mean/std/p99 are inflated")
        return dataclasses.replace(first, warnings=(*first.warnings, note))
    # already warm: no second warm-up
    second = summarize(collect(timed_run, warmup_runs=0, warmup_seconds=0.0, repeats=2 * profile.repeats,
                               min_seconds=2 * profile.min_seconds, progress=progress,
                               label=f"{profile.name} (re-measuring)"), profile, env)
    best = min(first, second, key=lambda r: r.env["robust_cov"])
    done = (f"CoV {first.cov:.1%}, re-measured with {second.samples} runs (CoV {second.cov:.1%}) and "
            f"reported the steadier series")
    if best.env["robust_cov"] <= noisy_cov / 2:
        note = (f"{done}: the spread comes from outliers ({best.env['outlier_share']:.1%} of runs over 3x "
                f"the median: interrupts or other processes); p50 is unaffected, mean/std/p99 are inflated")
    else:
        tail = "" if profile.stat == "p50" else f"; the budget statistic {profile.stat} is unreliable"
        note = (f"noisy machine: {done}, still spread (robust CoV {best.env['robust_cov']:.1%}); p50 is "
                f"robust to the interference, p90/p99 and the mean are not{tail}; re-run on a quiet machine")
    warmup = {k: first.env[k] for k in ("warmup_runs", "warmup_s")}  # the second series ran warm
    env2 = {**best.env, **warmup, "remeasured": True, "cov_first": round(first.cov, 4), "cov_second": round(second.cov, 4)}
    return dataclasses.replace(best, env=env2, warnings=(*best.warnings, note))
