"""Predicted latency: a cost model fitted on this host, and a roofline for targets we cannot reach.

Why a fitted per-layer cost model (and not a lookup table or FLOPs alone)
--------------------------------------------------------------------------
The search asks for thousands of latencies and cannot export and time each
candidate. Three known designs:

- OFA's per-layer lookup table is exact for layer shapes it has timed, but a
  width search produces a new shape at almost every trial, and each miss costs a
  measurement;
- FLOPs alone ignore that small networks at batch 1 spend much of their time in
  per-layer overhead and memory traffic (a 10-layer narrow net is slower than
  a 3-layer net of the same FLOPs);
- a datasheet roofline ignores how far real kernels fall short of peak.

We fit, on this host, one cost per unit of each per-layer feature and sum over
the layers `layers.layer_costs` finds::

    latency = a * dense MFLOPs + b * grouped MFLOPs + c * activation MB
              + d * weight MB + e * kernels + f

It behaves like a lookup table that generalises to unseen shapes. Depthwise and
grouped convolutions get their own FLOP cost because on CPUs they run at a
fraction of dense convolutions' FLOP rate (memory-bound, poorly vectorised).
Convolution FLOPs are counted with channels rounded up to the CPU's channel
block (`LayerCost.padded_flops`): ONNX Runtime computes 40 channels as 48 on an
AVX-512 machine, and that one correction more than halved the held-out error of
the benchmark (7 % -> 3 % median on our first data).
Coefficients are non-negative (scipy's NNLS): every FLOP, byte and kernel costs
time, and a prediction can never fall when a layer is added or widened, which
the search relies on. Residuals are weighted by 1/latency, i.e. we minimise
relative error, because a 30 us model matters to a budget as much as a 30 ms one
and the benchmark target is a median *percentage* error. A feature the
calibration set never exercised (no grouped convolutions, say) borrows the
coefficient of its nearest relative instead of silently costing nothing.

The fit is cached as JSON keyed by profile, CPU model (and GPU), ONNX Runtime
version, threads, batch, precision, channel block and input shape, so a machine
calibrates once per setting. The same fit works for any measurable backend
(torch-cuda modules are timed as they are), though only the ONNX Runtime CPU
one has been benchmarked here.

For predicted-only targets `RooflinePredictor` sums, per layer,
``max(FLOPs / peak[precision], bytes / bandwidth) + launch overhead`` from the
profile's datasheet figures: deterministic, optimistic (real kernels rarely reach
peak), and labelled as predicted wherever it is shown.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError, ConfigError
from ..faults import crash_point
from ..files import first_line, write_json
from ..types import HardwareProfile, LatencyReport
from .layers import LayerCost, layer_costs
from .profiles import QUICK_TIMING, quick_timing

__all__ = [
    "CACHE_ENV",
    "FEATURES",
    "LatencyModel",
    "LatencyPredictor",
    "RooflinePredictor",
    "cache_dir",
    "calibration_key",
    "cost_features",
    "predict_latency",
    "predictor_for",
    "roofline_ms",
]

CACHE_ENV = "COMPRESSOR_CACHE_DIR"
# bump when FEATURES, their definition or the calibration set change: old caches are then ignored
# (2: small networks with a strided stem joined the calibration set; 3: half of them on images a
# patchify stride-4 stem)
FORMAT_VERSION = 3
FEATURES = ("dense_mflops", "grouped_mflops", "activation_mb", "weight_mb", "kernels", "const")
# a feature never seen in calibration borrows this one's coefficient
_FALLBACK = {"grouped_mflops": "dense_mflops"}
_DENSE = ("conv", "linear", "matmul", "attention")


class LatencyModel(Protocol):
    """Anything that predicts one model's latency (ms) on one profile."""

    method: str

    def predict_ms(self, module: nn.Module, input_shape: Sequence[int]) -> float: ...


# ----------------------------------------------------------------------------- features


def cost_features(costs: Sequence[LayerCost], channel_block: int = 1) -> np.ndarray:
    """The `FEATURES` vector of one model: per-layer costs summed over its kernels,
    convolution FLOPs counted with channels rounded up to `channel_block`."""
    kernels = [c for c in costs if c.is_kernel]
    # a layer's bytes are (weights + inputs + outputs) x bytes per element: split them by elements
    weight_b = sum(c.bytes * c.params / max(1, c.params + c.input_elems + c.output_elems) for c in kernels)
    total_b = sum(c.bytes for c in kernels)
    return np.array([
        sum(c.padded_flops(channel_block) for c in costs if c.kind in _DENSE) / 1e6,
        sum(c.padded_flops(channel_block) for c in costs if c.kind == "grouped_conv") / 1e6,
        (total_b - weight_b) / 1e6,
        weight_b / 1e6,
        float(len(kernels)),
        1.0,
    ])


def _nnls_relative(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative residuals (X b - y) / y."""
    from scipy.optimize import nnls  # scipy comes with scikit-learn, a core dependency

    w = 1.0 / y
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0  # an all-zero column keeps coefficient 0
    b, _ = nnls((X / scale) * w[:, None], y * w)
    return b / scale


# ----------------------------------------------------------------------------- fitted predictor


def calibration_key(profile: HardwareProfile, input_shape: Sequence[int]) -> dict[str, Any]:
    """What a calibration is only valid for: change any of it and it must be redone."""
    from .backends import cpu_channel_block, cpu_model, usable_cores

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    gpu = torch.cuda.get_device_name() if profile.backend in ("torch-cuda", "tensorrt") and torch.cuda.is_available() \
        else None
    return {"format": FORMAT_VERSION, "gpu": gpu, "profile": profile.name, "backend": profile.backend,
            "threads": profile.threads or usable_cores(), "batch_size": profile.batch_size,
            "precision": profile.precision, "cpu_model": cpu_model(), "ort_version": ort_version,
            # OpenVINO's oneDNN convolutions block channels as MLAS's do (16 with AVX-512, 8 with AVX2)
            "channel_block": cpu_channel_block() if profile.backend in ("onnxruntime-cpu", "openvino-cpu") else 1,
            "input_shape": [int(d) for d in input_shape],
            # OpenVINO profiles time with OpenVINO: a new release is a new calibration (ORT keys stay as they were)
            **({"openvino_version": _openvino_version()} if profile.backend == "openvino-cpu" else {})}


def _openvino_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def cache_dir() -> Path:
    """Where calibrations are kept: ``$COMPRESSOR_CACHE_DIR``, else the XDG cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compressor"


class LatencyPredictor:
    """A latency cost model fitted to measurements on one profile (see module docstring).

    Use ``LatencyPredictor().calibrate(profile, modules, input_shape)`` to export
    and time `modules` and fit, ``.fit(...)`` to fit measurements taken elsewhere,
    ``predictor_for(profile, input_shape)`` for a cached calibration.
    """

    method = "fitted"

    def __init__(self, coef: Mapping[str, float] | None = None, key: Mapping[str, Any] | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        self.coef: dict[str, float] | None = dict(coef) if coef is not None else None
        self.key: dict[str, Any] = dict(key or {})
        self.info: dict[str, Any] = dict(info or {})
        if self.coef is not None:
            missing = set(FEATURES) - set(self.coef)
            if missing:
                raise ValueError(f"coefficients are missing features {sorted(missing)}.")

    # -- fitting
    @property
    def is_fitted(self) -> bool:
        return self.coef is not None

    def fit(self, models: Sequence[nn.Module | Sequence[LayerCost]], latencies_ms: Sequence[float],
            input_shape: Sequence[int], profile: HardwareProfile | None = None) -> "LatencyPredictor":
        """Fit to measured latencies. `models` are modules or their `layer_costs`."""
        if len(models) != len(latencies_ms):
            raise ValueError(f"got {len(models)} models but {len(latencies_ms)} latencies.")
        if len(models) < len(FEATURES):
            raise ValueError(f"need at least {len(FEATURES)} measured models to fit {len(FEATURES)} "
                             f"coefficients but got {len(models)}.")
        y = np.asarray(latencies_ms, dtype=np.float64)
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("latencies must be positive and finite.")
        if profile is not None:
            self.key = calibration_key(profile, input_shape)
        batch, precision, block = self._settings()
        X = np.stack([cost_features(self._costs(m, input_shape, batch, precision), block) for m in models])
        b = _nnls_relative(X, y)
        seen = X.any(axis=0)
        coef = dict(zip(FEATURES, (float(v) for v in b)))
        borrowed = {}
        for feat, parent in _FALLBACK.items():
            if not seen[FEATURES.index(feat)]:
                coef[feat] = coef[parent]
                borrowed[feat] = parent
        pred = X @ np.array([coef[f] for f in FEATURES])
        err = np.abs(pred - y) / y
        self.coef = coef
        self.info = {"n_models": len(y), "fit_mdape": float(np.median(err)),
                     "fit_max_ape": float(err.max()), "latency_range_ms": [float(y.min()), float(y.max())],
                     "borrowed": borrowed,
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        return self

    def calibrate(self, profile: HardwareProfile, modules: Sequence[nn.Module], input_shape: Sequence[int],
                  progress: bool = False, partial: Path | None = None) -> "LatencyPredictor":
        """Measure each module on `profile` here (exported to ONNX for ONNX Runtime and
        TensorRT, as is for torch-cuda) and fit to the profile's statistic.

        `partial`: a file that keeps the timings taken so far, so a calibration that was
        killed goes on from its last timed model instead of timing them all again."""
        from ._onnx import export_for_timing
        from .measure import measure_module_cuda, measure_onnx

        key = calibration_key(profile, input_shape)
        latencies = _read_partial(partial, key, len(modules))
        resumed = len(latencies)
        timing = quick_timing(profile)  # a fit needs each model's median, not its p99
        with tempfile.TemporaryDirectory(prefix="compressor-calib-") as tmp:
            for i, m in enumerate(modules[resumed:], start=resumed):
                if profile.backend == "torch-cuda":
                    report = measure_module_cuda(m, timing, input_shape, progress=progress)
                else:
                    path = export_for_timing(m, input_shape, Path(tmp) / f"candidate{i}.onnx")
                    report = measure_onnx(path, timing, input_shape, progress=progress)
                    path.unlink()
                latencies.append(report.value())
                if partial is not None:
                    write_json(partial, {"key": key, "latencies_ms": latencies})
                crash_point("calibration")
        fitted = self.fit(list(modules), latencies, input_shape, profile)
        fitted.info["resumed_from_model"] = resumed
        fitted.info["timing"] = {k: getattr(timing, k) for k in QUICK_TIMING}
        return fitted

    # -- predicting
    def _settings(self) -> tuple[int, str, int]:
        """(batch, precision, channel block) the calibration was taken at."""
        return (int(self.key.get("batch_size", 1)), str(self.key.get("precision", "fp32")),
                int(self.key.get("channel_block", 1)))

    def predict_costs(self, costs: Sequence[LayerCost]) -> float:
        if self.coef is None:
            raise RuntimeError("LatencyPredictor is not fitted: call calibrate() or fit() first.")
        features = cost_features(costs, self._settings()[2])
        return float(features @ np.array([self.coef[f] for f in FEATURES]))

    def predict_ms(self, module: nn.Module, input_shape: Sequence[int]) -> float:
        """Predicted latency of `module` in ms, at the calibration's batch and precision."""
        batch, precision, _ = self._settings()
        return self.predict_costs(layer_costs(module, input_shape, batch, precision))

    @staticmethod
    def _costs(m: nn.Module | Sequence[LayerCost], input_shape: Sequence[int], batch: int,
               precision: str) -> Sequence[LayerCost]:
        return layer_costs(m, input_shape, batch, precision) if isinstance(m, nn.Module) else m

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        if self.coef is None:
            raise RuntimeError("LatencyPredictor is not fitted: nothing to save.")
        return {"kind": "compressor.latency_predictor", "key": self.key, "features": list(FEATURES),
                "coef": self.coef, "info": self.info}

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON (atomically: a crash never leaves half a file)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyPredictor":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: latency calibration file not found") from None
        except (OSError, ValueError) as e:  # JSONDecodeError, and bytes that are not even text
            raise ConfigError(f"{path}: unreadable latency calibration: {first_line(e)}") from None
        if not isinstance(data, dict) or data.get("kind") != "compressor.latency_predictor":
            raise ConfigError(f"{path}: not a latency calibration file")
        if data.get("features") != list(FEATURES):
            raise ConfigError(f"{path}: calibration has features {data.get('features')}, this version "
                              f"uses {list(FEATURES)}; re-calibrate")
        try:
            coef = {k: float(v) for k, v in data["coef"].items()}
            # a fit is non-negative and finite (NNLS): anything else is a damaged file, and would
            # silently change every prediction (and with them the searched architecture)
            bad = sorted(k for k, v in coef.items() if not (math.isfinite(v) and v >= 0))
            if bad:
                raise ValueError(f"{', '.join(bad)} not a finite non-negative number")
            return cls(coef=coef, key=data.get("key", {}), info=data.get("info", {}))
        except (AttributeError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}: bad coefficients in latency calibration: {first_line(e)}") from None

    @staticmethod
    def cache_path(profile: HardwareProfile, input_shape: Sequence[int], directory: str | Path | None = None) -> Path:
        """Where the calibration for (profile, this machine, input shape) is kept."""
        key = calibration_key(profile, input_shape)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return Path(directory or cache_dir() / "latency") / f"{profile.name}-{digest}.json"

    @classmethod
    def cached(cls, profile: HardwareProfile, input_shape: Sequence[int],
               modules: Sequence[nn.Module] | None = None, n_models: int = 16, seed: int = 0,
               directory: str | Path | None = None, progress: bool = False) -> "LatencyPredictor":
        """The cached calibration for (profile, this machine, input shape), calibrating
        and caching it first if there is none. Without `modules`, `n_models` random
        candidates (`candidates.calibration_candidates`) are timed: about 1-2 s each."""
        key = calibration_key(profile, input_shape)
        path = cls.cache_path(profile, input_shape, directory)
        if path.is_file():
            try:
                found = cls.load(path)
                if found.key == key:
                    return found
            except ConfigError:
                pass  # a stale or damaged cache entry is recalibrated, not an error
        if modules is None:
            from .candidates import calibration_candidates

            modules = [m for _, m in calibration_candidates(n_models, input_shape, seed=seed)]
        partial = path.with_name(path.stem + ".partial.json")
        predictor = cls().calibrate(profile, modules, input_shape, progress=progress, partial=partial)
        predictor.save(path)
        partial.unlink(missing_ok=True)
        return predictor

    def __repr__(self) -> str:
        if self.coef is None:
            return "LatencyPredictor(unfitted)"
        terms = ", ".join(f"{k}={v:.3g}" for k, v in self.coef.items())
        return f"LatencyPredictor({self.key.get('profile', '?')}: {terms})"


# ----------------------------------------------------------------------------- roofline


def _read_partial(path: Path | None, key: Mapping[str, Any], n_models: int) -> list[float]:
    """Timings a killed calibration left for the same key; anything else (absent, damaged, other
    settings, more models than asked for) starts the calibration over."""
    if path is None or not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        latencies = [float(v) for v in data["latencies_ms"]]
        if data["key"] != json.loads(json.dumps(key)) or len(latencies) > n_models \
                or not all(math.isfinite(v) and v > 0 for v in latencies):
            return []
        return latencies
    except (OSError, ValueError, KeyError, TypeError):
        return []


def roofline_ms(costs: Sequence[LayerCost], profile: HardwareProfile) -> float:
    """Sum over kernels of max(FLOPs / peak, bytes / bandwidth) + launch overhead, in ms.

    Layers the runtime fuses into the preceding convolution (batch norm, the
    activation) and pure reshapes cost nothing.
    """
    device = profile.device
    if device is None:
        raise ConfigError(f"profile {profile.name!r} has no [device] datasheet figures for a roofline")
    peak = device.peak_gflops.get(profile.precision)
    if peak is None:
        raise ConfigError(f"profile {profile.name!r} has no device.peak_gflops.{profile.precision}")
    flops_per_s, bytes_per_s = peak * 1e9, device.memory_bandwidth_gbs * 1e9
    overhead_s = device.layer_overhead_us * 1e-6
    total = sum(max(c.flops / flops_per_s, c.bytes / bytes_per_s) + overhead_s for c in costs if c.is_kernel)
    return total * 1e3


class RooflinePredictor:
    """`LatencyModel` from a profile's datasheet figures (deterministic, no calibration)."""

    method = "roofline"

    def __init__(self, profile: HardwareProfile) -> None:
        if profile.device is None:
            raise ConfigError(f"profile {profile.name!r} has no [device] datasheet figures for a roofline")
        self.profile = profile

    def predict_costs(self, costs: Sequence[LayerCost]) -> float:
        return roofline_ms(costs, self.profile)

    def predict_ms(self, module: nn.Module, input_shape: Sequence[int]) -> float:
        p = self.profile
        return roofline_ms(layer_costs(module, input_shape, p.batch_size, p.precision), p)


def predictor_for(profile: HardwareProfile, input_shape: Sequence[int], **cached_kwargs: Any) -> LatencyModel:
    """The latency model the search should use for `profile`: the host-fitted cost
    model where the profile is measurable here (calibrating once, then cached),
    else the datasheet roofline."""
    from .measure import is_measurable

    if is_measurable(profile):
        return LatencyPredictor.cached(profile, input_shape, **cached_kwargs)
    if profile.device is not None:
        return RooflinePredictor(profile)
    from .measure import unavailable_reason

    raise BackendUnavailableError(f"{unavailable_reason(profile)}, and profile {profile.name!r} has no "
                                  f"[device] datasheet figures to predict from")


def needs_calibration(profile: HardwareProfile, input_shape: Sequence[int]) -> bool:
    """Whether `predictor_for` will first time models here: a measurable profile without a cached
    calibration (a damaged cache file also counts as cached here; it is recalibrated all the same)."""
    from .measure import is_measurable

    return is_measurable(profile) and not LatencyPredictor.cache_path(profile, input_shape).is_file()


def predict_latency(module: nn.Module, input_shape: Sequence[int], profile: HardwareProfile,
                    calibration: LatencyModel | str | Path | None = None) -> LatencyReport:
    """A predicted (measured=False) `LatencyReport` for `module` on `profile`.

    `calibration` is a fitted `LatencyPredictor`, a path to a saved one, or None
    for the datasheet roofline (the profile must then have a [device] table).
    """
    if isinstance(calibration, (str, Path)):
        calibration = LatencyPredictor.load(calibration)
    model: LatencyModel = calibration if calibration is not None else RooflinePredictor(profile)
    if isinstance(model, LatencyPredictor) and model.key.get("profile") not in (None, profile.name):
        raise ConfigError(f"calibration is for profile {model.key['profile']!r}, not {profile.name!r}")
    ms = model.predict_ms(module, input_shape)
    env = {"method": model.method, "input_shape": [int(d) for d in input_shape],
           "precision": profile.precision}
    if isinstance(model, RooflinePredictor) and profile.device is not None:
        env["device"] = {"peak_gflops": dict(profile.device.peak_gflops),
                         "memory_bandwidth_gbs": profile.device.memory_bandwidth_gbs,
                         "layer_overhead_us": profile.device.layer_overhead_us}
    report = LatencyReport.predicted(profile.name, profile.stat, ms, env=env, batch_size=profile.batch_size)
    note = ("predicted from datasheet figures (roofline): an optimistic estimate, real kernels rarely "
            "reach peak" if model.method == "roofline" else "predicted by the host-fitted cost model")
    return dataclasses.replace(report, warnings=(note,))
