"""ONNX export: parity, dynamic batch, single file, metadata, for every kind of model we ship."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import fx, nn

from compressor.errors import ExportError
from compressor.export import (
    OnnxExport,
    export_onnx,
    onnx_metadata,
    onnx_predict,
    read_onnx_metadata,
    set_onnx_metadata,
)
from compressor.export import onnx_export as onnx_export_module
from compressor.types import LatencyReport

aten = torch.ops.aten


class PlainCNN(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class ResidualCNN(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.block(h))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class TinyTransformer(nn.Module):
    """Self-attention + MLP over sequences of 16 tokens with 8 features."""

    def __init__(self, dim: int = 32, heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))


def lifted_graph_module() -> fx.GraphModule:
    """What Torch-Pruning hands back: real conv/bn/linear modules, every other op an aten call."""
    root = ResidualCNN()
    g = fx.Graph()
    x = g.placeholder("x")
    h = g.call_function(aten.relu.default, (g.call_module("stem", (x,)),))
    b = g.call_module("block.0", (h,))
    b = g.call_function(aten.relu.default, (g.call_module("block.1", (b,)),))
    b = g.call_module("block.4", (g.call_module("block.3", (b,)),))
    h = g.call_function(aten.relu.default, (g.call_function(aten.add.Tensor, (h, b)),))
    h = g.call_function(aten.mean.dim, (h, [2, 3]))
    g.output(g.call_module("head", (h,)))
    gm = fx.GraphModule(root, g)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode matters
        for m in gm.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return gm.eval()


def exported_program_module() -> nn.Module:
    model = PlainCNN().eval()
    ep = torch.export.export(model, (torch.randn(2, 1, 32, 32),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    return ep.module()


MODELS = {
    "plain_cnn": (lambda: PlainCNN(), (1, 32, 32)),
    "residual_cnn": (lambda: ResidualCNN(), (1, 32, 32)),
    "transformer": (lambda: TinyTransformer(), (16, 8)),
    "fx_lifted_aten": (lifted_graph_module, (1, 32, 32)),
    "torch_export_module": (exported_program_module, (1, 32, 32)),
}


def _batch(shape: tuple[int, ...], n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, OnnxExport, tuple[int, ...]]]:
    """Export every model once; the tests below inspect the results."""
    out = tmp_path_factory.mktemp("onnx")
    results = {}
    for name, (factory, shape) in MODELS.items():
        torch.manual_seed(0)
        model = factory()
        if not isinstance(model, fx.GraphModule):  # torch.export modules refuse .eval(): already inference
            model.eval()
        result = export_onnx(model, _batch(shape), out / f"{name}.onnx", metadata={"size": name, "width_ratio": 1.0})
        results[name] = (model, result, shape)
    return results


@pytest.mark.parametrize("name", list(MODELS))
def test_export_matches_pytorch(exported, name: str) -> None:
    _, result, _ = exported[name]
    assert result.parity_ok, result.notes
    assert result.checker_ok, result.notes
    assert result.max_abs_diff <= 1e-4
    assert result.slimmed
    # auto: the fast TorchScript exporter wherever it traces; dynamo for torch.export modules
    assert result.exporter == ("dynamo" if name == "torch_export_module" else "torchscript")
    assert not result.notes or "exported with" not in " ".join(result.notes)  # no fallback was needed
    assert result.opset == 18
    assert result.ok


@pytest.mark.parametrize("name", list(MODELS))
def test_dynamic_batch_runs_at_batch_1_and_5(exported, name: str) -> None:
    model, result, shape = exported[name]
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not a number
    for n in (1, 5):
        x = _batch(shape, n, seed=n)
        with torch.no_grad():
            expected = model(x).numpy()
        got = onnx_predict(result.path, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_export_is_one_self_contained_file(exported) -> None:
    folder = exported["plain_cnn"][1].path.parent
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{n}.onnx" for n in MODELS)  # no .onnx.data, no temp files left


def test_export_keeps_the_callers_training_mode(tmp_path: Path) -> None:
    model = PlainCNN().train()
    result = export_onnx(model, _batch((1, 32, 32)), tmp_path / "m.onnx", exporter="torchscript")
    assert model.training
    assert result.parity_ok  # compared in eval mode (running statistics), as exported


def test_torchscript_exporter_is_available_on_request(tmp_path: Path) -> None:
    result = export_onnx(PlainCNN(), _batch((1, 32, 32)), tmp_path / "m.onnx", exporter="torchscript")
    assert result.exporter == "torchscript" and result.parity_ok
    assert onnx_predict(result.path, _batch((1, 32, 32), 3)).shape == (3, 10)


def test_parity_failure_is_flagged_not_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export_module, "_parity", lambda proto, ref: (3e-3, None))
    result = export_onnx(PlainCNN(), _batch((1, 32, 32)), tmp_path / "m.onnx", exporter="torchscript")
    assert not result.parity_ok and not result.ok
    assert result.max_abs_diff == pytest.approx(3e-3)
    assert any("exceeds atol" in n for n in result.notes)
    assert read_onnx_metadata(result.path)["parity_max_abs_diff"] == repr(3e-3)


def test_parity_tolerance_grows_with_the_outputs_size(tmp_path: Path) -> None:
    """Outputs in the thousands differ from PyTorch by more than 1e-4 through float32 rounding alone:
    they pass (atol plus a relative part); a difference as large on small outputs is still flagged."""
    big = nn.Sequential(PlainCNN(), _Scale(3e4)).eval()
    x = _batch((1, 32, 32))
    with torch.no_grad():
        peak = float(big(x).abs().max())
    result = export_onnx(big, x, tmp_path / "big.onnx", exporter="torchscript")
    assert peak > 1e3 and result.parity_ok
    assert float(read_onnx_metadata(result.path)["parity_tolerance"]) == pytest.approx(1e-4 + 1e-5 * peak, rel=1e-3)


def test_parity_tolerance_ignores_outputs_that_are_not_finite() -> None:
    from compressor.export.onnx_export import _largest_finite

    assert _largest_finite(torch.tensor([1.0, -3.0, float("nan"), float("inf")])) == 3.0
    assert _largest_finite(torch.tensor([float("nan")])) == 0.0 and _largest_finite(torch.empty(0)) == 0.0


class _Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def test_runtime_failure_is_flagged_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export_module, "_parity", lambda proto, ref: (math.inf, "RuntimeError: boom"))
    result = export_onnx(PlainCNN(), _batch((1, 32, 32)), tmp_path / "m.onnx", slim=False, exporter="torchscript")
    assert not result.parity_ok
    assert any("boom" in n for n in result.notes)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="non-empty batch"):
        export_onnx(PlainCNN(), torch.empty(0, 1, 32, 32), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="atol must be positive"):
        export_onnx(PlainCNN(), _batch((1, 32, 32)), tmp_path / "m.onnx", atol=0)
    assert not (tmp_path / "m.onnx").exists()


def test_metadata_round_trip(exported, tmp_path: Path) -> None:
    src = exported["plain_cnn"][1].path
    path = tmp_path / "m.onnx"
    path.write_bytes(src.read_bytes())
    latency = {"host-cpu-1t": LatencyReport(profile="host-cpu-1t", stat="p50", p50_ms=0.8, p90_ms=0.9,
                                            p99_ms=1.2, mean_ms=0.85, std_ms=0.05, cov=0.06, samples=100,
                                            measured=True),
               "edge": LatencyReport.predicted("edge", "p50", 0.3)}
    props = onnx_metadata(name="s50", ratio=0.5, accuracy=0.97, teacher_agreement=0.98, latency=latency,
                          budget="1ms", teacher_sha256="ab" * 32)
    set_onnx_metadata(path, props)
    set_onnx_metadata(path, {"extra": 1})  # later calls merge, they do not erase

    meta = read_onnx_metadata(path)
    assert meta["size"] == "s50" and meta["width_ratio"] == "0.5"
    assert float(meta["accuracy"]) == 0.97 and float(meta["teacher_agreement"]) == 0.98
    assert meta["budget"] == "1ms" and meta["teacher_sha256"] == "ab" * 32
    assert meta["compressor_version"] and meta["extra"] == "1"
    assert "parity_max_abs_diff" in meta  # written by export_onnx, kept by the merges
    assert json.loads(meta["latency"]) == {"host-cpu-1t": {"stat": "p50", "ms": 0.8, "measured": True},
                                           "edge": {"stat": "p50", "ms": 0.3, "measured": False}}
    onnx.checker.check_model(str(path))
    assert onnx_predict(path, _batch((1, 32, 32), 2)).shape == (2, 10)


def test_export_writes_caller_metadata(exported) -> None:
    meta = read_onnx_metadata(exported["residual_cnn"][1].path)
    assert meta["size"] == "residual_cnn" and meta["width_ratio"] == "1.0"
    assert meta["exporter"].startswith("torch.onnx (torchscript)")


def test_dynamo_exporter_is_available_on_request(tmp_path: Path) -> None:
    result = export_onnx(PlainCNN(), _batch((1, 32, 32)), tmp_path / "m.onnx", exporter="dynamo")
    assert result.exporter == "dynamo" and result.parity_ok


def test_set_metadata_on_a_missing_file_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot read ONNX file"):
        set_onnx_metadata(tmp_path / "absent.onnx", {"a": "b"})
