"""Child process of `latency.remeasure_in_fresh_process`: read a request on stdin, time, print JSON.

Run as ``python -m compressor.hardware.remeasure``; it is an internal entry point,
not a user command (`compress profile` is the user's).
"""
from __future__ import annotations

import json
import sys

from ..types import to_jsonable
from .measure import measure_onnx
from .profiles import load_profile, override_profile


def main() -> int:
    request = json.loads(sys.stdin.read())
    profile = override_profile(load_profile(request["profile"]), **request.get("profile_fields", {}))
    report = measure_onnx(request["onnx"], profile, tuple(request["shape"]))
    print(json.dumps(to_jsonable(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
