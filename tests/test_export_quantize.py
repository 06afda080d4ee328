"""INT8 static quantization: a runnable QDQ model that agrees with fp32, written beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.export import export_onnx, onnx_predict, quantize_int8, read_onnx_metadata, sha256_file


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A small CNN trained for a second on 8x8 digits, so its argmax is meaningful."""
    torch.manual_seed(0)
    x, y = _digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, 1400, 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    path = tmp_path_factory.mktemp("int8") / "m.onnx"
    export_onnx(model.eval(), x[1400:1464], path, metadata={"size": "s100"})
    return path, x, y


def test_int8_model_runs_and_agrees_with_fp32(fp32_model, tmp_path: Path) -> None:
    path, x, y = fp32_model
    before = sha256_file(path)
    out = quantize_int8(path, x[:1400], tmp_path / "m.int8.onnx")

    assert out == tmp_path / "m.int8.onnx" and out.is_file()
    assert sha256_file(path) == before  # fp32 file untouched: INT8 is reported beside it
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    val = x[1400:]
    fp32, int8 = onnx_predict(path, val), onnx_predict(out, val)
    assert int8.shape == fp32.shape
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
    assert (fp32.argmax(1) == y[1400:].numpy()).mean() >= 0.5  # the fp32 model did learn something
    for n in (1, 5):
        assert onnx_predict(out, val[:n]).shape == (n, 10)  # batch stays dynamic


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
