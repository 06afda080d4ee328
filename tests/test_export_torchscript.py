"""TorchScript and `.pt2` files reload without the model's class and match PyTorch at any batch."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from compressor.errors import ExportError
from compressor.export import export_pt2, export_torchscript, sha256_file


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.mark.parametrize("kind", ["module", "fx"])
def test_torchscript_and_pt2_reload_and_match(kind: str, tmp_path: Path) -> None:
    model = _cnn() if kind == "module" else fx.symbolic_trace(_cnn())
    x = torch.randn(6, 1, 16, 16)
    ts = export_torchscript(model, x, tmp_path / "m.ts.pt")
    pt2 = export_pt2(model, x, tmp_path / "m.pt2")
    loaded_ts, loaded_pt2 = torch.jit.load(str(ts)), torch.export.load(str(pt2)).module()
    with torch.no_grad():
        for n in (1, 5):
            xb = torch.randn(n, 1, 16, 16)
            torch.testing.assert_close(loaded_ts(xb), model(xb))
            torch.testing.assert_close(loaded_pt2(xb), model(xb))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.ts.pt"]  # no temp files left


def test_untraceable_model_is_an_export_error(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # data-dependent: torch.export cannot capture it

    with pytest.raises(ExportError, match="torch.export failed"):
        export_pt2(Branchy(), torch.ones(2, 3), tmp_path / "b.pt2")
    assert not (tmp_path / "b.pt2").exists()


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_file(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
