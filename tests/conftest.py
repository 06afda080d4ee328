from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models for --arch

from tiny_models import TinyResidual, randomise_bn  # noqa: E402

torch.set_num_threads(1)  # tests share two cores; determinism over speed


@pytest.fixture(scope="session", autouse=True)
def _session_calibration_cache(tmp_path_factory):
    """Latency calibrations of this test session (and the `compress` processes it starts) go to a
    folder of its own, never the user's cache: the suite runs as on a fresh machine (CI's), and a
    calibration left by an earlier run or another checkout can neither hide nor cause a failure."""
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path_factory.mktemp("calibration-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits8():
    from compressor.intake.data import load_data

    return load_data("digits", seed=0, image_size=8)


@pytest.fixture(scope="session")
def tiny_teacher_files(tmp_path_factory, digits8):
    """The same trained tiny network saved in every teacher format."""
    torch.manual_seed(0)
    model = randomise_bn(TinyResidual()).eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(60):  # a few seconds: enough to be better than chance
        idx = torch.randint(0, len(digits8.x_train), (64,))
        loss = torch.nn.functional.cross_entropy(model(digits8.x_train[idx]), digits8.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("teachers")
    x = digits8.x_val[:4]
    paths = {}
    torch.jit.save(torch.jit.trace(model, x), d / "teacher.ts.pt")
    paths["torchscript"] = d / "teacher.ts.pt"
    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, d / "teacher.pt2")
    paths["export"] = d / "teacher.pt2"
    torch.save(model.state_dict(), d / "teacher.sd.pt")
    paths["state_dict"] = d / "teacher.sd.pt"
    torch.save(model, d / "teacher.pickle.pt")
    paths["pickle"] = d / "teacher.pickle.pt"
    paths["model"] = model
    return paths


PREDICTED_PROFILE = "test-predicted"


@pytest.fixture(scope="session")
def predicted_profile(tmp_path_factory) -> str:
    """A hardware profile measured nowhere: latencies are predicted, so whole runs time nothing."""
    path = tmp_path_factory.mktemp("profiles") / f"{PREDICTED_PROFILE}.toml"
    path.write_text(f'name = "{PREDICTED_PROFILE}"\nbackend = "onnxruntime-cpu"\nmeasured = false\n[device]\n'
                    'peak_gflops = { fp32 = 100.0 }\nmemory_bandwidth_gbs = 20.0\nlayer_overhead_us = 5.0\n')
    return str(path)
