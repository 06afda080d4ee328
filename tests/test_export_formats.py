"""Edge formats (--formats): real conversions loaded back, parity, latency; failures recorded, never fatal."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TinyResidual, randomise_bn

import compressor.report as report_module
from compressor.cli import main
from compressor.config import resolve_config
from compressor.errors import EXIT_USAGE, ConfigError
from compressor.export import export_onnx
from compressor.export.formats import (
    FormatExport,
    export_formats,
    format_timing_profile,
)
from compressor.hardware import latency_report, load_profile, override_profile
from compressor.hardware.backends import model_input_shape
from compressor.manifest import example_manifest, read_manifest, validate_manifest
from compressor.report import write_report

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None


@pytest.fixture(scope="module")
def quick_profile():
    """host-cpu-1t's settings, cut to a few runs: these tests check the record, not the figure."""
    return override_profile(load_profile("host-cpu-1t"), warmup_runs=2, warmup_seconds=0.0, repeats=20,
                            min_seconds=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits8):
    torch.manual_seed(0)
    model = randomise_bn(TinyResidual()).eval()
    folder = tmp_path_factory.mktemp("size")
    onnx = export_onnx(model, digits8.x_val[:64], folder / "model.onnx")
    return model, onnx.path, digits8.x_val[:64]


@pytest.fixture(scope="module")
def ort_and_openvino(tiny, quick_profile):
    model, onnx_path, x = tiny
    return export_formats(["onnx", "ort", "openvino"], model, onnx_path, x, quick_profile, (1, 8, 8))


def _pytorch(model, x):
    with torch.no_grad():
        return model(x).numpy()


def test_ort_format_loads_back_matches_pytorch_and_is_timed(tiny, ort_and_openvino, quick_profile):
    import onnxruntime as ort

    model, onnx_path, x = tiny
    f = ort_and_openvino["ort"]
    assert set(ort_and_openvino) == {"ort", "openvino"}  # onnx is the base, made already
    assert f.ok and f.produced and not f.reason, f.reason
    assert f.files["ort"] == onnx_path.with_suffix(".ort") and f.files["ort"].is_file()
    assert "Conv" in f.files["ort_operators"].read_text()  # the operator list for a reduced ORT build
    session = ort.InferenceSession(str(f.files["ort"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - _pytorch(model, x)).max() < 1e-5
    assert f.parity.max_abs_diff < 1e-5 and f.parity.argmax_agreement == 1.0 and f.parity.samples == 64
    assert f.latency.measured and f.latency.profile == quick_profile.name
    assert f.latency.env["backend"] == "onnxruntime-cpu" and f.latency.p50_ms > 0
    assert f.runtime.startswith("ONNX Runtime")
    assert model_input_shape(f.files["ort"]) == (1, 8, 8)  # `compress profile model.ort` reads its shape


def test_openvino_ir_loads_back_matches_pytorch_and_is_timed(tiny, ort_and_openvino):
    model, onnx_path, x = tiny
    f = ort_and_openvino["openvino"]
    if not HAS_OPENVINO:
        assert not f.ok and not f.produced and f.reason == "OpenVINO: not installed (pip install openvino)"
        return
    import openvino as ov

    assert f.ok, f.reason
    xml, weights = f.files["openvino"], f.files["openvino_weights"]
    assert (xml.name, weights.name) == ("model.xml", "model.bin") and xml.parent == onnx_path.parent
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x.numpy())[compiled.outputs[0]]
    assert np.abs(got - _pytorch(model, x)).max() < 1e-5  # fp32 weights kept (not OpenVINO's fp16 default)
    assert f.parity.ok and f.parity.argmax_agreement == 1.0
    assert f.latency.measured and f.latency.env["backend"] == "openvino-cpu"
    assert f.latency.env["inference_threads"] == 1 and f.latency.env["inference_precision"] == "f32"
    assert model_input_shape(xml) == (1, 8, 8)


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_openvino_cpu_profile_times_onnx_and_ir_files(tiny, capsys):
    _, onnx_path, _ = tiny
    profile = load_profile("openvino-cpu")
    assert profile.backend == "openvino-cpu" and profile.measured and profile.threads == 1
    quick = override_profile(profile, warmup_runs=2, warmup_seconds=0.0, repeats=20, min_seconds=0.0)
    report = latency_report(quick, (1, 8, 8), onnx_path=onnx_path)  # what --also-profile openvino-cpu runs
    assert report.measured and report.env["backend"] == "openvino-cpu" and report.p50_ms > 0
    xml = onnx_path.with_suffix(".xml")
    if xml.is_file():  # written by the openvino format above
        assert main(["profile", str(xml), "--profile", "openvino-cpu"]) == 0
        assert "openvino-cpu" in capsys.readouterr().out


def test_a_converter_that_raises_costs_that_format_only(tiny, quick_profile, monkeypatch):
    import compressor.export.openvino_ir as openvino_ir

    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(openvino_ir, "convert_to_openvino", broken)
    model, onnx_path, x = tiny
    made = export_formats(["openvino", "ort"], model, onnx_path, x, quick_profile, (1, 8, 8))
    failed = made["openvino"]
    assert not failed.ok and not failed.produced and failed.parity is None and failed.latency is None
    assert failed.reason == ("conversion failed: RuntimeError: converter exploded" if HAS_OPENVINO else
                             "OpenVINO: not installed (pip install openvino)")
    assert made["ort"].ok, made["ort"].reason  # the next format is still made


def test_executorch_without_its_package_says_so(tiny, quick_profile, monkeypatch):
    import compressor.export.executorch_pte as pte

    monkeypatch.setattr(pte.importlib.util, "find_spec", lambda name: None)
    model, onnx_path, x = tiny
    f = export_formats(["executorch"], model, onnx_path, x, quick_profile, (1, 8, 8))["executorch"]
    assert not f.ok and not f.produced and f.reason == "ExecuTorch is not installed (pip install executorch)"


def test_executorch_crash_is_a_reason_with_the_versions(tiny, quick_profile, monkeypatch):
    import compressor.export.executorch_pte as pte

    if not HAS_EXECUTORCH:
        pytest.skip("ExecuTorch is not installed: the test above covers it")

    def crashed(*args, **kwargs):  # what a native crash in the child looks like from here
        return subprocess.CompletedProcess(args, -11, stdout="", stderr="[method.cpp:1] something broke\n")

    monkeypatch.setattr(pte.subprocess, "run", crashed)
    model, onnx_path, x = tiny
    f = export_formats(["executorch"], model, onnx_path, x, quick_profile, (1, 8, 8))["executorch"]
    assert not f.ok and not f.produced
    assert f.reason.startswith("the ExecuTorch process died of SIGSEGV (torch 2.13.0")
    assert f.reason.endswith("): [method.cpp:1] something broke") and "executorch " in f.reason


def test_format_names_are_checked_before_any_work(tmp_path, capsys):
    code = main(["--teacher", str(tmp_path / "t.pt"), "--budget", "1ms", "--formats", "onnx,tflite,ort"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE and len(err.splitlines()) == 1, err
    assert err == "compress: error: formats must be among onnx, ort, openvino, executorch, got 'tflite'"
    with pytest.raises(ConfigError, match=r"got 'openvino-ir' \(did you mean openvino\?\)"):
        resolve_config({"formats": ("openvino-ir",)}, {"teacher": "t.pt", "budget": "1ms"})
    cfg = resolve_config({"formats": ("executorch", "ort", "ort")}, {"teacher": "t.pt", "budget": "1ms"})
    assert cfg.formats == ("onnx", "executorch", "ort")  # ONNX always, first; each name once
    assert resolve_config({}, {"teacher": "t.pt", "budget": "1ms"}).formats == ("onnx",)
    with pytest.raises(ValueError, match="format must be one of"):
        export_formats(["tflite"], torch.nn.Identity(), tmp_path / "m.onnx", torch.zeros(2, 1), None, (1,))


def test_formats_are_timed_under_the_runs_host_cpu_profile(predicted_profile):
    measured, predicted = load_profile("host-cpu"), load_profile(predicted_profile)
    assert format_timing_profile([measured, predicted]).name == "host-cpu"
    assert format_timing_profile([predicted]).name == "host-cpu-1t"  # nothing measured here: the default


def _with_formats(manifest: dict) -> dict:
    latency = manifest["models"][1]["latency"]["host-cpu-1t"]
    manifest["models"][1]["formats"] = {
        "ort": {"ok": True, "file": "models/s50/model.ort", "runtime": "ONNX Runtime 1.32.0",
                "parity": {"max_abs_diff": 1.2e-7, "argmax_agreement": 1.0, "samples": 64, "atol": 1e-4, "ok": True},
                "latency": {**latency, "p50_ms": 0.61}},
        "executorch": {"ok": False, "reason": "ExecuTorch cannot be imported beside torch 2.13.0, executorch 9.9: "
                                              "ImportError: undefined symbol"},
    }
    return manifest


def test_manifest_accepts_formats_and_checks_their_types():
    manifest = _with_formats(example_manifest())
    validate_manifest(manifest)
    manifest["models"][1]["formats"]["ort"]["ok"] = "yes"
    with pytest.raises(ConfigError, match=r"models\[1\]\.formats\['ort'\]\.ok: must be true or false"):
        validate_manifest(manifest)


def test_report_has_a_formats_table_and_says_why_one_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "make_plots", lambda manifest, out_dir: [])
    write_report(tmp_path, _with_formats(example_manifest()))
    html, md = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    assert "| s50 | ort | models/s50/model.ort | ONNX Runtime 1.32.0 | 1.2e-07 | 100.0% | 0.61 ms | ok |" in md
    assert "| s50 | onnx | s50.onnx | ONNX Runtime | 1.5e-06 | — | 0.85 ms | ok |" in md
    for text in (html, md):
        assert "Formats" in text and "under the settings of host-cpu-1t" in text
        assert "not produced: ExecuTorch cannot be imported beside torch 2.13.0" in text
        assert "s50: executorch not produced" in text  # in the flags too
    unformatted = tmp_path / "plain"
    write_report(unformatted, example_manifest())
    assert "Formats" not in (unformatted / "report.md").read_text()


@pytest.mark.slow
def test_compress_writes_every_format_per_size(tmp_path, tiny_teacher_files, predicted_profile, capsys):
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--budget", "10s", "--method", "skeleton",
                 "--sizes", "0.5", "--profile", predicted_profile, "--image-size", "8", "--epochs", "1",
                 "--calibration-models", "6", "--no-progress", "--out", str(out),
                 "--formats", "onnx,ort,openvino,executorch"])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(out)
    assert m["config"]["formats"] == ["onnx", "ort", "openvino", "executorch"]
    (size,) = m["models"]
    formats = size["formats"]
    assert set(formats) == {"ort", "openvino", "executorch"}
    folder = out / Path(size["files"]["onnx"]).parent
    expected = {"ort": ["model.ort", "model.required_operators.config"],
                "openvino": ["model.xml", "model.bin"] if HAS_OPENVINO else [],
                "executorch": ["model.pte"] if HAS_EXECUTORCH else []}
    for name, f in formats.items():
        if not expected[name]:  # the runtime is missing here: the format says so, the run went on
            assert not f["ok"] and "not installed" in f["reason"]
            continue
        assert f["ok"], f"{name}: {f.get('reason')}"
        assert f["file"] == size["files"][name] and (out / f["file"]).parent == folder
        for file in expected[name]:
            assert (folder / file).is_file(), file
        assert f["parity"]["ok"] and f["parity"]["max_abs_diff"] <= 1e-4 and f["parity"]["argmax_agreement"] == 1.0
        # the run's profile is predicted: formats are timed on this host under host-cpu-1t's settings
        assert f["latency"]["measured"] and f["latency"]["profile"] == "host-cpu-1t" and f["latency"]["p50_ms"] > 0
    assert all(role in size["sha256"] for role in size["files"] if role != "model_card")
    assert "## Formats" in (out / "report.md").read_text()


def test_format_export_is_ok_only_when_produced_checked_and_timed():
    assert not FormatExport("ort").ok
    assert not FormatExport("ort", files={"ort": Path("m.ort")}).ok  # never checked
