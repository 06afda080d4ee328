"""The host predictor corrected on a few measured networks of one teacher's operator mix.

The host cost model (`predict.LatencyPredictor`) is fitted on random plain, residual and
separable CNNs. Networks cut from a zoo teacher (squeeze-excite, h-swish, dense
concatenation, attention, grouped and depthwise convolutions in other proportions) run
17-82 % slower than it predicts (benchmarks/results/predictor_zoo.md), and always in that
direction. Measuring the teacher and a handful of its students is cheap; a correction fitted
on them is applied to every network cut from that teacher.

Three corrections, all fitted on relative error (as the host fit is) and all expressible as
new non-negative coefficients of the same `FEATURES` (so a corrected prediction still never
falls when a layer is added or widened):

- ``scale``: every coefficient times one factor s (the host's shape, the teacher's level);
- ``scale+kernels`` (``+weights``): s times the host's coefficients plus an extra cost per kernel
  (and per MB of weights): the host fit, on plain CNNs, found kernels and weight bytes free,
  while EfficientNet's 190 small kernels (SE blocks) and ResNeXt's 30 MB of weights are not;
- ``refit``: all coefficients refitted by non-negative least squares, pulled towards s times
  the host's (a ridge prior, weak: `_PRIOR`): with a handful of measurements the prior keeps
  coefficients the networks hardly exercise where the host put them.

`benchmarks/bench_predictor_zoo.py` compares them on held-out students of each zoo teacher.
On the first data (13 teachers, the teacher + 4 students fitted, 6 random students held out
each, 78 in all) the host predictor was 50 % off; scale 9.6 % median, p90 25 %; +kernels 8.6 %;
+kernels+weights 6.9 %; refit 7.0 % median, p90 24 %, with the fewest optimistic misses
(11 of 78 over 10 % too fast, against 17-23): `DEFAULT_METHOD` is refit.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from .layers import LayerCost, layer_costs
from .predict import FEATURES, LatencyPredictor, cost_features

__all__ = ["DEFAULT_METHOD", "METHODS", "CorrectedPredictor", "fit_correction", "predictor_from_dict"]

METHODS = ("scale", "scale+kernels", "scale+kernels+weights", "refit")
DEFAULT_METHOD = "refit"
_KERNELS = FEATURES.index("kernels")
_WEIGHTS = FEATURES.index("weight_mb")
# strength of the pull towards the scaled host coefficients in "refit" (relative units)
_PRIOR = 0.1


def _is_family(module: nn.Module) -> bool:
    """Networks of the built-in student families (`compressor.families`): not cut from the teacher."""
    from ..families import FAMILIES

    return isinstance(module, tuple(FAMILIES.values()))


def _rel_lstsq_scale(p: np.ndarray, y: np.ndarray) -> float:
    """argmin_s sum(((s p - y) / y)^2)."""
    r = p / y
    return float(r.sum() / max(float((r * r).sum()), 1e-30))


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(A / scale, b)
    return x / scale


def fit_features(b0: np.ndarray, X: np.ndarray, y: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """Corrected coefficients from host coefficients `b0`, the networks' `FEATURES` rows `X` and their
    measured latencies `y` (ms)."""
    if method not in METHODS:
        raise ValueError(f"correction method must be one of {', '.join(METHODS)} but got {method!r}.")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("latencies must be positive and finite.")
    p = X @ b0
    if np.any(p <= 0):
        raise ValueError("the host predictor predicts 0 ms for a measured network.")
    s = _rel_lstsq_scale(p, y)
    w = 1.0 / y
    if method == "scale" or len(y) < 2:
        b = s * b0
    elif method in ("scale+kernels", "scale+kernels+weights"):
        extra = [_KERNELS] + ([_WEIGHTS] if method.endswith("weights") else [])
        coef = _nnls(np.stack([p, *(X[:, j] for j in extra)], axis=1) * w[:, None], y * w)
        b = coef[0] * b0
        for j, c in zip(extra, coef[1:]):
            b[j] += c
        if not np.any(b):  # degenerate data: keep the plain scale
            b = s * b0
    else:  # refit with the scaled host coefficients as a ridge prior, each term in relative units
        prior = s * b0
        contrib = np.median(X * w[:, None], axis=0)  # a unit of coefficient j, as a share of the latency
        rows = np.diag(np.sqrt(_PRIOR) * contrib)
        keep = contrib > 0
        A = np.vstack([X * w[:, None], rows[keep]])
        t = np.concatenate([y * w, (np.sqrt(_PRIOR) * contrib * prior)[keep]])
        b = _nnls(A, t)
        b[~keep] = prior[~keep]  # a feature none of these networks has keeps the scaled host cost
    return b


def fit_correction(host: LatencyPredictor, costs: Sequence[Sequence[LayerCost]], measured_ms: Sequence[float],
                   method: str = DEFAULT_METHOD) -> dict[str, float]:
    """Corrected coefficients of `host` fitted to `measured_ms` of the networks whose `layer_costs` are `costs`."""
    if method not in METHODS:
        raise ValueError(f"correction method must be one of {', '.join(METHODS)} but got {method!r}.")
    if not costs or len(costs) != len(measured_ms):
        raise ValueError(f"need one or more measured networks, got {len(costs)} networks and "
                         f"{len(measured_ms)} latencies.")
    assert host.coef is not None
    X = np.stack([cost_features(c, host._settings()[2]) for c in costs])
    b = fit_features(np.array([host.coef[f] for f in FEATURES]), X, np.asarray(measured_ms, dtype=np.float64), method)
    return dict(zip(FEATURES, (float(max(v, 0.0)) for v in b)))


class CorrectedPredictor:
    """The host predictor with corrected coefficients for networks cut from one teacher.

    Networks of the built-in families (`compressor.families`: the plain CNN family is the host
    fit's own calibration family) are predicted by `host` as they were; every other network
    (the teacher, its `teacher_scaled` students, their TA and nested sizes) by `corrected`."""

    method = "fitted+teacher"

    def __init__(self, host: LatencyPredictor, coef: Mapping[str, float], info: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.corrected = LatencyPredictor(coef=coef, key=host.key, info=host.info)
        self.info: dict[str, Any] = dict(info or {})

    @property
    def key(self) -> dict[str, Any]:
        return self.host.key

    @property
    def coef(self) -> dict[str, float] | None:
        return self.corrected.coef

    def for_module(self, module: nn.Module) -> LatencyPredictor:
        return self.host if _is_family(module) else self.corrected

    def predict_ms(self, module: nn.Module, input_shape: Sequence[int]) -> float:
        batch, precision, _ = self.host._settings()
        return self.for_module(module).predict_costs(layer_costs(module, input_shape, batch, precision))

    def to_dict(self) -> dict[str, Any]:
        return {**self.host.to_dict(), "teacher_correction": {"coef": dict(self.corrected.coef or {}),
                                                              "info": self.info}}

    def __repr__(self) -> str:
        return f"CorrectedPredictor({self.info.get('method', '?')}: {self.host!r})"


def predictor_from_dict(stored: Mapping[str, Any]) -> LatencyPredictor | CorrectedPredictor:
    """A predictor from its `to_dict()` (a search worker rebuilds the driver's this way)."""
    host = LatencyPredictor(coef=stored["coef"], key=stored.get("key"), info=stored.get("info"))
    corr = stored.get("teacher_correction")
    if not corr:
        return host
    return CorrectedPredictor(host, corr["coef"], corr.get("info"))
