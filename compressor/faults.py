"""Crash points: where the fault-injection suite may kill a run, deterministically.

A run whose environment holds ``COMPRESSOR_CRASH_AT=<point>[@<n>]`` sends itself
SIGKILL the n-th time (default: the first) it passes `point`, exactly as a power cut
or the out-of-memory killer would stop it: no handler runs, no file is closed. The
suite kills a run at every point in turn and checks that `--resume` ends where an
uninterrupted run ends, with nothing finished redone. Watching the run folder from
outside cannot hit points such as "the manifest is written but not yet renamed";
this hook can. Without the variable a crash point is one dictionary lookup.

Points: ``stage`` (a pipeline stage finished: intake, calibration, teacher, students,
export, select, tensorrt, seal, in that order, so ``stage@3`` is "the teacher is
measured"), ``calibration`` (one latency calibration model timed), ``trial`` (a search
trial finished), ``scoring`` (a search trial has drawn its candidate and is scoring
it), ``epoch`` (an epoch's checkpoint written), ``int8`` (an INT8 copy written),
``export`` (one size exported, measured and recorded), ``report`` (report
written, manifest not yet), and ``write:<file name>`` (that file fully written and
synced, not yet renamed into place).

Under torchrun every rank inherits the variable; ``COMPRESSOR_CRASH_RANK=<r>`` keeps
it to rank r (torchrun's RANK), so one rank of a launch dies and the others see it
die. Ranks other than 0 pass only ``epoch`` (after rank 0 has written that epoch's
checkpoint).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "COMPRESSOR_CRASH_AT"
RANK_ENV = "COMPRESSOR_CRASH_RANK"

_passed: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    rank = os.environ.get(RANK_ENV)
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _passed[name] += 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
