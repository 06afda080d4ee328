"""TensorRT: a clean refusal where it is absent; the build flow checked against a stand-in module."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from compressor.errors import BackendUnavailableError, ExportError
from compressor.export import TRT_UNAVAILABLE, build_tensorrt_engine, export_onnx, tensorrt_available
from compressor.hardware import tensorrt as trt_module

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    path = tmp_path_factory.mktemp("trt") / "m.onnx"
    export_onnx(model.eval(), torch.randn(4, 1, 8, 8), path, exporter="torchscript")
    return path


@pytest.mark.skipif(HAS_TRT, reason="TensorRT and a GPU are present")
def test_unavailable_is_reported_with_the_standard_line(onnx_file: Path, tmp_path: Path) -> None:
    available, reason = tensorrt_available()
    assert not available and reason.startswith(TRT_UNAVAILABLE)
    assert TRT_UNAVAILABLE == "TensorRT: not available on this machine"
    with pytest.raises(BackendUnavailableError) as err:
        build_tensorrt_engine(onnx_file, tmp_path / "m.engine")
    assert str(err.value).startswith(TRT_UNAVAILABLE)
    assert not (tmp_path / "m.engine").exists()


def test_arguments_are_checked_before_anything_else(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        build_tensorrt_engine(onnx_file, tmp_path / "e", min_batch=4, opt_batch=2)
    with pytest.raises(ExportError, match="no ONNX file"):
        build_tensorrt_engine(tmp_path / "absent.onnx", tmp_path / "e")
    with pytest.raises(ExportError, match="QuantizeLinear"):
        build_tensorrt_engine(onnx_file, tmp_path / "e", int8=True)


def _fake_tensorrt(input_shape: tuple[int, ...]) -> mock.MagicMock:
    """A stand-in for the `tensorrt` module: records calls, returns fixed bytes."""
    trt = mock.MagicMock(name="tensorrt")
    trt.__version__ = "10.0.0"
    builder = trt.Builder.return_value
    network = builder.create_network.return_value
    network.num_inputs = 1
    network.get_input.return_value = types.SimpleNamespace(name="input", shape=input_shape)
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    builder.build_serialized_network.return_value = b"ENGINE"
    builder.create_builder_config.return_value.get_timing_cache.return_value.serialize.return_value = b"CACHE"
    return trt


def test_build_flow_against_a_stand_in(onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = _fake_tensorrt((-1, 1, 8, 8))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_module, "_cuda_gpu_present", lambda: True)
    assert tensorrt_available() == (True, "TensorRT 10.0.0")

    out = build_tensorrt_engine(onnx_file, tmp_path / "m.engine", min_batch=1, opt_batch=4, max_batch=16)
    assert out.read_bytes() == b"ENGINE"
    assert (tmp_path / "tensorrt.timing.cache").read_bytes() == b"CACHE"  # shared cache by default
    builder = trt.Builder.return_value
    config = builder.create_builder_config.return_value
    builder.create_network.assert_called_once_with(0)  # explicit batch is the only mode in TensorRT 10
    trt.OnnxParser.return_value.parse_from_file.assert_called_once_with(str(onnx_file))
    config.set_flag.assert_called_once_with(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile.return_value
    profile.set_shape.assert_called_once_with("input", (1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))
    config.add_optimization_profile.assert_called_once_with(profile)
    config.create_timing_cache.assert_called_once_with(b"")

    build_tensorrt_engine(onnx_file, tmp_path / "m2.engine")  # the second build reads the cache back
    assert config.create_timing_cache.call_args.args == (b"CACHE",)


def test_stand_in_rejects_fixed_batch_and_parse_errors(onnx_file: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_module, "_cuda_gpu_present", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt((1, 1, 8, 8)))
    with pytest.raises(ExportError, match="fixed batch"):
        build_tensorrt_engine(onnx_file, tmp_path / "e")
    broken = _fake_tensorrt((-1, 1, 8, 8))
    broken.OnnxParser.return_value.parse_from_file.return_value = False
    broken.OnnxParser.return_value.num_errors = 1
    broken.OnnxParser.return_value.get_error.return_value = "unsupported op"
    monkeypatch.setitem(sys.modules, "tensorrt", broken)
    with pytest.raises(ExportError, match="unsupported op"):
        build_tensorrt_engine(onnx_file, tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU")
def test_real_engine_builds(onnx_file: Path, tmp_path: Path) -> None:  # pragma: no cover - GPU hosts only
    out = build_tensorrt_engine(onnx_file, tmp_path / "m.engine", max_batch=8)
    assert out.stat().st_size > 0
