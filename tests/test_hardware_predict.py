"""Predicted latency: per-layer costs, the datasheet roofline (deterministic, so asserted
exactly), and the host-fitted cost model (fit, persistence, cache, a real calibration)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from compressor.errors import ConfigError
from compressor.hardware import (
    LatencyPredictor,
    RooflinePredictor,
    build_candidate,
    layer_costs,
    load_profile,
    override_profile,
    predict_latency,
    predictor_for,
    roofline_ms,
    sample_candidates,
)
from compressor.hardware import quick_timing
from compressor.hardware.predict import CACHE_ENV, FEATURES, cache_dir, cost_features
from compressor.types import DeviceSpec, HardwareProfile

SHAPE = (1, 8, 8)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + x)


def net(width: int = 8, depth: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         *[Block(width) for _ in range(depth)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def device_profile(peak: float = 1.0, bandwidth: float = 1.0, overhead_us: float = 1.0) -> HardwareProfile:
    return HardwareProfile(name="toy", backend="tensorrt", precision="fp16", measured=False,
                           device=DeviceSpec({"fp16": peak}, bandwidth, overhead_us))


# ----------------------------------------------------------------------------- layer costs


def test_layer_costs_follow_execution_order_with_exact_conv_flops() -> None:
    costs = layer_costs(net(8, 1), SHAPE)
    assert [c.name for c in costs] == ["0", "1", "2", "3.conv", "3.bn", "<add>", "<relu>", "4", "5", "6"]
    stem = costs[0]
    assert stem.kind == "conv" and stem.flops == 2 * 9 * 1 * 8 * 64  # multiply-add counts as 2
    assert (stem.in_channels, stem.out_channels, stem.groups, stem.reads_input) == (1, 8, 1, True)
    assert stem.bytes == (8 * 9 + 8 + 64 + 8 * 64) * 4
    # batch norm and ReLU ride on the conv; the residual add and the ReLU after it do not
    assert [c.fused for c in costs[:7]] == [False, True, True, False, True, False, False]
    assert costs[5].kind == "elementwise" and costs[5].input_elems == 2 * 8 * 64
    flatten = costs[8]
    assert flatten.kind == "reshape" and flatten.bytes == 0 and not flatten.is_kernel


def test_layer_costs_scale_with_precision_and_batch_and_keep_module_mode() -> None:
    model = net(8, 1).train()
    fp32, fp16 = layer_costs(model, SHAPE), layer_costs(model, SHAPE, precision="fp16")
    assert [a.bytes for a in fp32] == [2 * b.bytes for b in fp16]
    batched = layer_costs(model, SHAPE, batch_size=4)
    assert batched[0].flops == 4 * fp32[0].flops
    assert model.training  # restored


def test_padded_flops_round_channels_up_to_the_block() -> None:
    conv = layer_costs(nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 40, 1)), SHAPE)[1]
    assert conv.padded_flops(1) == conv.flops
    assert conv.padded_flops(16) == pytest.approx(conv.flops * (16 / 8) * (48 / 40))
    first = layer_costs(nn.Conv2d(1, 8, 1), SHAPE)[0]
    assert first.padded_flops(16) == pytest.approx(first.flops * 2)  # input channels of the model input stay


def test_grouped_convolutions_are_their_own_kind() -> None:
    dw = layer_costs(nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)), SHAPE)[1]
    assert dw.kind == "grouped_conv" and dw.flops == 2 * 9 * 8 * 64


# ----------------------------------------------------------------------------- roofline


def test_roofline_of_one_layer_by_hand() -> None:
    linear = layer_costs(nn.Linear(100, 10), (100,), precision="fp16")
    (layer,) = linear
    assert layer.flops == 2000 and layer.bytes == (1010 + 100 + 10) * 2
    # max(2000 FLOP / 1 GFLOP/s, 2240 B / 1 GB/s) + 1 us = 3.24 us
    assert roofline_ms(linear, device_profile()) == pytest.approx(3.24e-3)
    compute_bound = device_profile(peak=0.5, bandwidth=100.0, overhead_us=0.0)
    assert roofline_ms(linear, compute_bound) == pytest.approx(4e-3)


def test_roofline_is_deterministic_and_grows_with_width_and_depth() -> None:
    profile = load_profile("jetson-orin-nano")
    predictor = RooflinePredictor(profile)
    a = predictor.predict_ms(net(8, 1), SHAPE)
    assert a == predictor.predict_ms(net(8, 1), SHAPE) > 0
    assert predictor.predict_ms(net(64, 1), SHAPE) > a
    assert predictor.predict_ms(net(8, 4), SHAPE) > a
    # a fused layer costs nothing: adding BN + ReLU after a conv leaves the estimate unchanged
    plain = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten())
    fused = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
    assert predictor.predict_ms(plain, SHAPE) == predictor.predict_ms(fused, SHAPE)


@pytest.mark.parametrize("name", ["jetson-orin-nano", "raspberry-pi-5", "t4-tensorrt-fp16"])
def test_predict_latency_on_every_predicted_target(name: str) -> None:
    profile = load_profile(name)
    report = predict_latency(net(16, 2), SHAPE, profile)
    assert not report.measured and report.samples == 0 and report.profile == name
    assert report.value() == pytest.approx(roofline_ms(layer_costs(net(16, 2), SHAPE, 1, profile.precision),
                                                       profile))
    assert report.env["method"] == "roofline" and "predicted" in report.warnings[0]


def test_roofline_needs_device_figures() -> None:
    with pytest.raises(ConfigError, match="no \\[device\\] datasheet figures"):
        predict_latency(net(), SHAPE, load_profile("host-cpu-1t"))


# ----------------------------------------------------------------------------- fitted cost model


@pytest.fixture(scope="module")
def candidates() -> list[nn.Module]:
    return [m for _, m in sample_candidates(10, SHAPE, seed=3, max_depth=4, max_width=32)]


def synthetic_ms(module: nn.Module, coef: dict[str, float]) -> float:
    return float(cost_features(layer_costs(module, SHAPE)) @ np.array([coef[f] for f in FEATURES]))


def test_fit_recovers_a_known_cost_model(candidates: list[nn.Module]) -> None:
    truth = {"dense_mflops": 0.005, "grouped_mflops": 0.02, "activation_mb": 0.01, "weight_mb": 0.004,
             "kernels": 0.001, "const": 0.003}
    latencies = [synthetic_ms(m, truth) for m in candidates]
    predictor = LatencyPredictor().fit(candidates, latencies, SHAPE)
    for m, y in zip(candidates, latencies):
        assert predictor.predict_ms(m, SHAPE) == pytest.approx(y, rel=1e-3)
    assert predictor.info["n_models"] == 10 and predictor.info["fit_mdape"] < 1e-3
    assert all(v >= 0 for v in predictor.coef.values())


def test_fitted_prediction_grows_with_size(candidates: list[nn.Module]) -> None:
    truth = {"dense_mflops": 0.005, "grouped_mflops": 0.0, "activation_mb": 0.0, "weight_mb": 0.0,
             "kernels": 0.001, "const": 0.003}
    predictor = LatencyPredictor().fit(candidates, [synthetic_ms(m, truth) for m in candidates], SHAPE)
    small, wide, deep = (predictor.predict_ms(net(w, d), SHAPE) for w, d in ((8, 1), (64, 1), (8, 6)))
    assert 0 < small < wide and small < deep


def test_unseen_grouped_convs_borrow_the_dense_cost() -> None:
    plain = [m for _, m in sample_candidates(8, SHAPE, seed=1, family="plain", max_depth=4, max_width=32)]
    predictor = LatencyPredictor().fit(plain, [1.0 + i for i in range(8)], SHAPE)
    assert predictor.info["borrowed"] == {"grouped_mflops": "dense_mflops"}
    assert predictor.coef["grouped_mflops"] == predictor.coef["dense_mflops"]


def test_fit_checks_its_inputs(candidates: list[nn.Module]) -> None:
    with pytest.raises(ValueError, match="at least 6 measured models"):
        LatencyPredictor().fit(candidates[:3], [1.0, 2.0, 3.0], SHAPE)
    with pytest.raises(ValueError, match="positive and finite"):
        LatencyPredictor().fit(candidates, [0.0] * len(candidates), SHAPE)
    with pytest.raises(RuntimeError, match="not fitted"):
        LatencyPredictor().predict_ms(net(), SHAPE)


def test_save_load_round_trip(candidates: list[nn.Module], tmp_path: Path) -> None:
    predictor = LatencyPredictor().fit(candidates, [1.0 + i for i in range(10)], SHAPE,
                                       load_profile("host-cpu-1t"))
    path = predictor.save(tmp_path / "cal" / "predictor.json")
    loaded = LatencyPredictor.load(path)
    assert loaded.coef == predictor.coef and loaded.key == predictor.key
    assert loaded.predict_ms(net(), SHAPE) == predictor.predict_ms(net(), SHAPE)
    report = predict_latency(net(), SHAPE, load_profile("host-cpu-1t"), calibration=path)
    assert not report.measured and report.env["method"] == "fitted"
    with pytest.raises(ConfigError, match="calibration is for profile 'host-cpu-1t', not 'host-cpu'"):
        predict_latency(net(), SHAPE, load_profile("host-cpu"), calibration=loaded)


@pytest.mark.parametrize(("text", "message"), [("{", "unreadable"), ('{"kind": "x"}', "not a latency calibration"),
                                               ('{"kind": "compressor.latency_predictor", "features": ["a"]}',
                                                "re-calibrate")])
def test_load_rejects_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        LatencyPredictor.load(path)
    with pytest.raises(ConfigError, match="not found"):
        LatencyPredictor.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- real calibration


@pytest.fixture(scope="module")
def quick_cpu() -> HardwareProfile:
    return override_profile(load_profile("host-cpu-1t"), warmup_runs=2, warmup_seconds=0.0, repeats=20,
                            min_seconds=0.0)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, quick_cpu: HardwareProfile,
               candidates: list[nn.Module]) -> tuple[LatencyPredictor, Path]:
    """A real calibration on this CPU: 6 candidates exported and timed (a few seconds)."""
    directory = tmp_path_factory.mktemp("cache")
    predictor = LatencyPredictor.cached(quick_cpu, SHAPE, modules=candidates[:6], directory=directory)
    return predictor, directory


def test_real_calibration_predicts_positive_growing_latency(calibrated: tuple[LatencyPredictor, Path]) -> None:
    predictor, directory = calibrated
    assert predictor.key["profile"] == "host-cpu-1t" and predictor.info["n_models"] == 6
    small = predictor.predict_ms(net(8, 1), SHAPE)
    huge = predictor.predict_ms(net(128, 8), SHAPE)  # ~4000x the FLOPs: no timing noise can reorder these
    assert 0 < small < huge
    (saved,) = directory.glob("host-cpu-1t-*.json")
    assert json.loads(saved.read_text())["key"] == predictor.key


def test_cached_calibration_is_reused(calibrated: tuple[LatencyPredictor, Path], quick_cpu: HardwareProfile,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, directory = calibrated

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibrated again instead of reading the cache")

    monkeypatch.setattr(LatencyPredictor, "calibrate", boom)
    again = LatencyPredictor.cached(quick_cpu, SHAPE, directory=directory)
    assert again.coef == predictor.coef
    with pytest.raises(AssertionError, match="calibrated again"):  # another shape is another calibration
        LatencyPredictor.cached(quick_cpu, (1, 9, 9), directory=directory)


def test_cache_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path


def test_predictor_for_picks_fitted_here_and_roofline_elsewhere(
        calibrated: tuple[LatencyPredictor, Path], quick_cpu: HardwareProfile) -> None:
    predictor, directory = calibrated
    assert isinstance(predictor_for(load_profile("raspberry-pi-5"), SHAPE), RooflinePredictor)
    here = predictor_for(quick_cpu, SHAPE, directory=directory)
    assert isinstance(here, LatencyPredictor) and here.coef == predictor.coef


def test_candidates_are_distinct_and_buildable_for_1d_inputs() -> None:
    pairs = sample_candidates(6, (16,), seed=0, max_depth=3)
    assert len({repr(a) for a, _ in pairs}) == 6
    held_out = sample_candidates(6, (16,), seed=0, max_depth=3, exclude=[a for a, _ in pairs])
    assert not {repr(a) for a, _ in pairs} & {repr(a) for a, _ in held_out}
    model = build_candidate(pairs[0][0], (2, 16))
    assert model(torch.randn(3, 2, 16)).shape == (3, 10)


def test_calibration_times_each_model_lightly_but_never_longer_than_the_profile(
        calibrated: tuple[LatencyPredictor, Path], quick_cpu: HardwareProfile) -> None:
    profile = load_profile("host-cpu-1t")
    light = quick_timing(profile)
    assert light.repeats < profile.repeats and light.min_seconds < profile.min_seconds
    assert light.warmup_seconds < profile.warmup_seconds
    assert (light.name, light.backend, light.threads, light.stat) == (profile.name, profile.backend,
                                                                      profile.threads, profile.stat)
    assert quick_timing(quick_cpu).min_seconds == quick_cpu.min_seconds == 0.0  # a shorter setting stays
    predictor, _ = calibrated
    assert predictor.info["timing"]["repeats"] == min(quick_cpu.repeats, light.repeats)


def test_a_calibration_set_holds_small_networks_with_a_strided_stem() -> None:
    """A quarter of the networks a calibration times are as small as the built-in families' smallest
    students; the rest are the random CNNs, the same as before."""
    from compressor.hardware import calibration_candidates

    cal = calibration_candidates(16, (3, 32, 32), seed=0)
    random_ones = sample_candidates(12, (3, 32, 32), seed=0)
    assert [a for a, _ in cal[:12]] == [a for a, _ in random_ones]
    small = [a for a, _ in cal[12:]]
    assert len(small) == 4 and len({repr(a) for a, _ in cal}) == 16
    # on images of 32 a side, half of them start with a stride-4 patchify stem (kernel 4, no padding)
    assert [arch["blocks"][0][1] for arch in small] == [2, 2, 4, 4]
    for arch in small:
        assert 1 <= len(arch["blocks"]) <= 3 and all(w <= 32 for w, _ in arch["blocks"])
    patchify = cal[-1][1][0]
    assert patchify.kernel_size == (4, 4) and patchify.stride == (4, 4) and patchify.padding == (0, 0)
    assert cal[-1][1](torch.randn(2, 3, 32, 32)).shape == (2, 10)
    costs = [sum(c.flops for c in layer_costs(m, (3, 32, 32))) for _, m in cal]
    assert np.median(costs[12:]) < min(np.median(costs[:12]), 0.2 * max(costs[:12]))
    # smaller images and 1-D signals keep the stride-2 stem only
    for shape in ((1, 16, 16), (40,)):
        assert all(a["blocks"][0][1] == 2 for a, _ in calibration_candidates(16, shape, seed=0)[12:])
