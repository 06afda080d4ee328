"""INT8 static quantization: a runnable QDQ model that agrees with fp32, written beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.export import (
    Int8Settings,
    export_onnx,
    int8_settings_for,
    onnx_predict,
    quantize_int8,
    read_onnx_metadata,
    sha256_file,
)
from compressor.hardware import CPU_CLASSES, host_cpu_class

HOST_CLASS = host_cpu_class()


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A small CNN trained for two seconds on 8x8 digits, so its argmax is meaningful.

    Six epochs rather than fewer: near-ties in an undertrained model's logits flip under
    any quantization; with S8S8 computed without saturation (what VNNI and ARM run;
    emulated here with ORT's `session.disable_quant_qdq`) it agrees at 0.997, U8U8 at 1.0."""
    torch.manual_seed(0)
    x, y = _digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(6):
        for i in range(0, 1400, 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    path = tmp_path_factory.mktemp("int8") / "m.onnx"
    export_onnx(model.eval(), x[1400:1464], path, metadata={"size": "s100"})
    return path, x, y


@pytest.mark.parametrize("cpu_class", [HOST_CLASS])  # the test id names the class measured, e.g. [x86-avx2]
def test_int8_with_host_cpu_class_settings_agrees_with_fp32(fp32_model, tmp_path: Path, cpu_class: str) -> None:
    """Quantized with the settings chosen for this host's CPU class, INT8 keeps >= 99% of fp32's top-1.

    The same threshold holds on every class; only the settings differ (full-range
    S8S8 where int8 kernels cannot saturate, U8U8 where u8*s8 would).
    """
    path, x, y = fp32_model
    before = sha256_file(path)
    out = quantize_int8(path, x[:1400], tmp_path / "m.int8.onnx")  # no settings: the host's are used

    assert out == tmp_path / "m.int8.onnx" and out.is_file()
    assert sha256_file(path) == before  # fp32 file untouched: INT8 is reported beside it
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    val = x[1400:]
    fp32, int8 = onnx_predict(path, val), onnx_predict(out, val)
    assert int8.shape == fp32.shape
    assert (fp32.argmax(1) == y[1400:].numpy()).mean() >= 0.5  # the fp32 model did learn something
    agreement = (fp32.argmax(1) == int8.argmax(1)).mean()
    assert agreement >= 0.99, f"INT8/fp32 top-1 agreement {agreement:.3f} on {cpu_class}"
    for n in (1, 5):
        assert onnx_predict(out, val[:n]).shape == (n, 10)  # batch stays dynamic

    meta = read_onnx_metadata(out)
    expected = int8_settings_for(cpu_class)
    assert meta["int8_cpu_class"] == cpu_class
    assert meta["int8_activation_type"] == expected.activation_type
    assert meta["int8_weight_type"] == expected.weight_type
    assert meta["int8_reduce_range"] == str(expected.reduce_range).lower()
    assert meta["int8_per_channel"] == str(expected.per_channel).lower()
    assert meta["int8_reason"] == expected.reason
    assert expected.label in meta["quantization"]


def test_int8_metadata_and_opsets(fp32_model, tmp_path: Path) -> None:
    path, x, _ = fp32_model
    out = quantize_int8(path, x[:100], tmp_path / "q.onnx", max_samples=64)
    meta = read_onnx_metadata(out)
    assert meta["size"] == "s100"  # carried over from fp32
    assert meta["precision"] == "int8" and meta["calibration_samples"] == "64"
    assert "QDQ" in meta["quantization"]
    assert "parity_max_abs_diff" not in meta  # the fp32 figure does not describe this file
    domains = {o.domain for o in onnx.load(str(out)).opset_import}
    assert domains <= {"", "ai.onnx", "com.microsoft"}  # unused optimiser domains dropped


@pytest.mark.parametrize("cpu_class", ["x86-vnni", "x86-avx2"])
def test_int8_explicit_settings_are_used_and_recorded(fp32_model, tmp_path: Path, cpu_class: str) -> None:
    """Settings for another class (quantizing for a different serving host) override the host's."""
    path, x, _ = fp32_model
    settings = int8_settings_for(cpu_class)
    out = quantize_int8(path, x[:200], tmp_path / "q.onnx", settings=settings)
    meta = read_onnx_metadata(out)
    assert meta["int8_cpu_class"] == cpu_class and meta["int8_activation_type"] == settings.activation_type
    pair = {"qint8": "S8", "quint8": "U8"}
    assert f"QDQ {pair[settings.activation_type]}{pair[settings.weight_type]} per-channel" in meta["quantization"]

    # First and last layers stay fp32: their weights are plain initializers, not dequantized int8.
    model = onnx.load(str(out))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(layers) == 3
    assert [n.input[1] in dq_outputs for n in layers] == [False, True, False]
    assert meta["int8_fp32_first_last"] == "true"
    assert meta["int8_fp32_nodes"].split(",") == [layers[0].name, layers[-1].name]
    weight_types = {i.data_type for i in model.graph.initializer if i.data_type in (onnx.TensorProto.INT8,
                                                                                     onnx.TensorProto.UINT8)}
    assert weight_types == {onnx.TensorProto.INT8 if settings.weight_type == "qint8" else onnx.TensorProto.UINT8}


@pytest.mark.parametrize("cpu_class", CPU_CLASSES)
def test_int8_settings_for_each_cpu_class(cpu_class: str) -> None:
    s = int8_settings_for(cpu_class)
    assert s.cpu_class == cpu_class and s.reason.endswith(".") and s.reason.count(". ") == 0  # one sentence
    assert s.per_channel and s.fp32_first_last and s.calibration == "minmax"
    if cpu_class in ("x86-avx512", "x86-avx2", "x86-other", "unknown"):
        # u8*s8 saturates (or may): 7-bit weights or a u8*u8 kernel, never full-range u8/s8 * s8.
        assert s.reduce_range or s.weight_type == "quint8"
        assert "saturat" in s.reason
    else:
        assert (s.activation_type, s.weight_type, s.reduce_range) == ("qint8", "qint8", False)  # full range
    assert int8_settings_for(cpu_class) == s  # pure


def test_int8_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="cpu_class"):
        int8_settings_for("x86-avx1024")
    base = int8_settings_for("x86-vnni")
    with pytest.raises(ValueError, match="activation_type"):
        Int8Settings(**{**base.__dict__, "activation_type": "int8"})
    with pytest.raises(ValueError, match="calibration"):
        Int8Settings(**{**base.__dict__, "calibration": "mse"})


def test_int8_refuses_to_overwrite_fp32(fp32_model) -> None:
    path, x, _ = fp32_model
    with pytest.raises(ExportError, match="must differ"):
        quantize_int8(path, x[:10], path)


def test_int8_needs_calibration_samples(fp32_model, tmp_path: Path) -> None:
    path, x, _ = fp32_model
    with pytest.raises(ExportError, match="at least one sample"):
        quantize_int8(path, x[:0], tmp_path / "q.onnx")
    assert not any(tmp_path.iterdir())


def test_calibration_reader_is_deterministic_and_rewinds() -> None:
    from compressor.export import TensorCalibrationReader

    x = torch.arange(100, dtype=torch.float32).reshape(100, 1)
    a = TensorCalibrationReader(x, "input", batch_size=16, max_samples=40)
    b = TensorCalibrationReader(x, "input", batch_size=16, max_samples=40)
    batches = []
    while (batch := a.get_next()) is not None:
        batches.append(batch["input"])
    assert [len(t) for t in batches] == [16, 16, 8] and a.samples == 40
    a.rewind()
    np.testing.assert_array_equal(a.get_next()["input"], b.get_next()["input"])
    assert not np.array_equal(np.concatenate(batches).ravel(), np.arange(40))  # shuffled, not the first 40
