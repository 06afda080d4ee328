"""Child process of `latency.remeasure_in_fresh_process`: read a request on stdin, time, print JSON.

Run as ``python -m compressor.hardware.remeasure``; it is an internal entry point,
not a user command (`compress profile` is the user's).

ONNX Runtime on the CPU, the backend of every host profile, is timed without importing torch
(`ort_cpu`): the child then starts in about 0.3 s instead of 2.5 s, and every `compress`
starts it at least twice (the teacher's second figure, the selected size's re-measurement).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from ..types import HardwareProfile, LatencyReport, to_jsonable
from .ort_cpu import OrtCpuBackend
from .profiles import load_profile, override_profile


def _measure(onnx: str, profile: HardwareProfile, shape: Sequence[int]) -> LatencyReport:
    if profile.backend == OrtCpuBackend.name and profile.measured and Path(onnx).is_file():
        return OrtCpuBackend().measure(Path(onnx), profile, shape)
    from .measure import measure_onnx  # other runtimes, and the errors for a file or profile it cannot time

    return measure_onnx(onnx, profile, shape)


def main() -> int:
    request = json.loads(sys.stdin.read())
    profile = override_profile(load_profile(request["profile"]), **request.get("profile_fields", {}))
    report = _measure(request["onnx"], profile, tuple(request["shape"]))
    print(json.dumps(to_jsonable(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
