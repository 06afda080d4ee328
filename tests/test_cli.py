"""The CLI in-process, end to end, on a tiny teacher; and every bad input as one line."""
from __future__ import annotations

import json
import os

import pytest

from compressor.cli import main
from compressor.distill.precision import resolve_precision
from compressor.errors import EXIT_BUDGET_NOT_MET, EXIT_USAGE
from compressor.manifest import read_manifest

FAST = ["--image-size", "8", "--epochs", "1", "--calibration-models", "6", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # latency calibrations go to a per-session cache, not the user's
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _one_line_error(capsys, code, expected_code, match):
    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    assert err.startswith("compress: error:") and match in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_skeleton_run_end_to_end(tmp_path, tiny_teacher_files, capsys):
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--budget", "10s", "--method", "skeleton",
                 "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(out)
    assert m["selected"] and m["budget_met"]
    sel = next(x for x in m["models"] if x["name"] == m["selected"])
    assert sel["meets_budget"] and sel["onnx_max_abs_diff"] <= 1e-4 and sel["latency"]["host-cpu-1t"]["measured"]
    assert (out / sel["files"]["onnx"]).is_file()
    assert m["teacher"]["sha256"] and m["versions"]["torch"] and m["config"]["budget"] == "10s"
    assert (out / "report.html").is_file()
    capsys.readouterr()
    assert main(["pick", str(out), "--budget", "10s"]) == 0
    picked = capsys.readouterr().out.strip()
    assert picked.endswith("model.onnx") and os.path.isfile(picked)
    from compressor.export import read_onnx_metadata

    meta = read_onnx_metadata(picked)
    assert meta["size"] == m["selected"] and "host-cpu-1t" in meta["latency"] and meta["teacher_sha256"]


def test_budget_not_met_exit_code_and_report(tmp_path, tiny_teacher_files, capsys):
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--budget", "1us", "--method", "skeleton",
                 "--sizes", "0.5", "--out", str(out), *FAST])
    assert code == EXIT_BUDGET_NOT_MET
    m = read_manifest(out)
    assert m["selected"] is None and not m["budget_met"] and m["closest"]["over_budget_ms"] > 0
    assert "no size meets" in capsys.readouterr().err


def test_existing_run_is_never_overwritten(tmp_path, tiny_teacher_files, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"precious": true}')
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--budget", "1ms", "--out", str(out), *FAST])
    _one_line_error(capsys, code, EXIT_USAGE, "already holds a finished run")
    assert json.loads((out / "manifest.json").read_text()) == {"precious": True}


@pytest.mark.parametrize("args,match", [
    (["--budget", "5"], "has no unit"),
    (["--budget", "5 parsecs"], "cannot parse budget"),
    (["--teacher", "MISSING"], "does not exist"),
    (["--teacher", "JUNK"], "not a TorchScript"),
    (["--teacher", "PICKLE"], "--trust-pickle"),
    (["--data", "NPZ3"], "does not accept the data"),
    (["--data", "EMPTYDIR"], "no class subfolders"),
    (["--profile", "no-such-profile"], "no-such-profile"),
    (["--out", "UNWRITABLE"], "cannot write"),
    (["--config", "BADCONFIG"], "unknown key"),
    (["--verify-top", "-1"], "verify_top must be 0 (off) or more"),
    (["--anchor-students", "9"], "anchor_students must be 0 (off) to 6"),
    (["--schedule", "chain", "--losses", "dkd"], "use --schedule sandwich with them"),
])
def test_bad_input_is_one_line(args, match, tmp_path, tiny_teacher_files, capsys):
    import numpy as np

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nothing useful")
    npz = tmp_path / "rgb.npz"
    np.savez(npz, x=np.zeros((20, 3, 8, 8), np.float32), y=np.arange(20) % 10)
    (tmp_path / "empty").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "c.toml"
    cfg.write_text("budgett = '1ms'\n")
    subst = {"MISSING": str(tmp_path / "missing.pt"), "JUNK": str(junk),
             "PICKLE": str(tiny_teacher_files["pickle"]), "NPZ3": str(npz), "EMPTYDIR": str(tmp_path / "empty"),
             "UNWRITABLE": str(blocker / "sub"), "BADCONFIG": str(cfg)}
    args = [subst.get(a, a) for a in args]
    base = {"--teacher": str(tiny_teacher_files["torchscript"]), "--budget": "1ms", "--out": str(tmp_path / "o")}
    for k, v in base.items():
        if k not in args:
            args += [k, v]
    code = main([*args, *FAST])
    _one_line_error(capsys, code, EXIT_USAGE, match)


def test_debug_shows_traceback(tmp_path, capsys):
    code = main(["--teacher", str(tmp_path / "missing.pt"), "--budget", "1ms", "--debug"])
    assert code == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err


def test_help_lists_options_with_examples(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--teacher", "--budget", "--data", "--profile", "--out", "--seed", "--config", "--debug",
                "--resume", "--storage", "e.g."):
        assert opt in text


def test_profiles_command_lists_builtins(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "host-cpu-1t" in out and "raspberry-pi-5" in out and "predicted" in out


def test_unwritable_dir_permissions(tmp_path, tiny_teacher_files, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--budget", "1ms",
                 "--out", str(ro / "run"), *FAST])
    _one_line_error(capsys, code, EXIT_USAGE, "cannot write")


def test_nested_run_end_to_end_and_resume(tmp_path, tiny_teacher_files, capsys):
    """Search + one nested training run yields several sizes; --resume redoes nothing finished."""
    out = tmp_path / "run"
    args = ["--teacher", str(tiny_teacher_files["export"]), "--budget", "10s", "--trials", "4",
            "--sizes", "1,0.5,0.25", "--out", str(out), *FAST]
    assert main(args) == 0, capsys.readouterr().err
    m = read_manifest(out)
    names = [x["name"] for x in m["models"]]
    assert len(names) == 3 and m["selected"] in names
    assert all(x["parity_ok"] and x["onnx_max_abs_diff"] <= 1e-4 for x in m["models"])
    params = sorted(x["params"] for x in m["models"])
    assert params[0] < params[-1]  # nested sizes really are smaller dense models
    assert m["search"]["n_trials"] >= 4 and m["search"]["pareto"]
    assert m["training"]["history"]
    assert m["training"]["precision"] == resolve_precision("auto")[0]  # the CPU's choice, written down
    # the searched student and the sizes were measured untrained before training (premeasure)
    checked = m["search"]["verified"]["checked"]
    assert {c["role"] for c in checked} >= {"student", "size"} and "reselected" in m["search"]["verified"]
    assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in checked)
    # before the search, the predictor was corrected on the teacher and students cut from it (anchor)
    anchor = m["search"]["anchor"]
    assert [r["name"] for r in anchor["timed"]][0] == "teacher" and len(anchor["timed"]) >= 3
    assert anchor["method"] == "refit" and anchor["scale"] > 0 and "median_abs_after" in anchor["fit_error"]
    assert (out / "search" / "anchor.json").is_file() and m["stages"]["anchor"] >= 0
    first = (out / "manifest.json").read_text()
    # a second invocation without --resume refuses; with --resume it completes from what is there
    assert main(args) == EXIT_USAGE
    assert main([*args, "--resume"]) == 0
    m2 = read_manifest(out)
    assert m2["search"]["n_trials"] == m["search"]["n_trials"]  # no trial was redone
    assert len(m2["training"]["history"]) == len(m["training"]["history"])  # no epoch was redone
    assert m2["search"]["verified"] == m["search"]["verified"]  # the check before training was reused, not redone
    assert m2["search"]["anchor"] == m["search"]["anchor"]  # and so was the predictor's correction
    assert json.loads(first)["teacher"]["sha256"] == m2["teacher"]["sha256"]


def test_resume_with_changed_settings_is_refused(tmp_path, tiny_teacher_files, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"teacher": "other.pt", "epochs": 1}))
    code = main(["--teacher", str(tiny_teacher_files["export"]), "--budget", "10s", "--out", str(out),
                 "--resume", *FAST])
    _one_line_error(capsys, code, EXIT_USAGE, "cannot resume")


def test_relative_budget_claim_is_remeasured_and_the_returned_manifest_is_the_one_on_disk(tmp_path,
                                                                                      tiny_teacher_files, capsys):
    """0.9x of the teacher's own latency; the selected size is timed again in a fresh process."""
    from compressor import compress

    out = tmp_path / "run"
    result = compress(teacher=str(tiny_teacher_files["torchscript"]), budget="0.9x", method="skeleton",
                      sizes=(0.5, 0.25), out=str(out), image_size=8, epochs=1, calibration_models=6,
                      progress=False)
    m = result.manifest
    assert m == read_manifest(out)  # what compress() returns is what manifest.json holds
    b = m["budget"]
    teacher_p50 = m["teacher"]["latency"]["host-cpu-1t"]["p50_ms"]
    assert b["factor"] == 0.9 and b["ms"] == pytest.approx(0.9 * teacher_p50) and b["teacher_ms"] == teacher_p50
    # the figure the budget rests on is the lower of two measurements, the second in a fresh process
    twice = m["teacher"]["latency"]["host-cpu-1t"]["env"]["measurements_ms"]
    assert len(twice) == 2 and teacher_p50 == pytest.approx(min(twice))
    assert m["config"]["budget"] == "0.9x"
    for v in m["verification"]:  # every re-measured size, in the order tried
        assert v["first"]["measured"] and v["second"]["measured"]
        first, second = v["first"]["p50_ms"], v["second"]["p50_ms"]
        spread = max(v["first"]["spread_ms"], v["second"]["spread_ms"], abs(second - first))
        assert v["holds"] == (second + spread <= b["ms"])  # the two measurements' disagreement counts
    if m["selected"]:
        assert m["verification"] and m["verification"][-1]["size"] == m["selected"]
        assert m["verification"][-1]["holds"]
    assert {"intake", "teacher", "distill", "export", "select", "seal"} <= set(m["stages"])  # skeleton: no search
    assert m["host"]["cpu_class"] and m["host"]["round_to"] >= 8
    sizes = {x["name"]: x for x in m["models"]}
    for x in sizes.values():  # meets_budget is the same rule: statistic plus its spread
        lat = x["latency"]["host-cpu-1t"]
        assert x["meets_budget"] == (lat["p50_ms"] + lat["spread_ms"] <= b["ms"])
        assert set(x["sha256"]) >= {"onnx"} and (out / x["files"]["model_card"]).is_file()
    assert "Budget claim" in (out / "report.md").read_text()


def test_version_flag(capsys):
    from compressor import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"compress {__version__}"


def test_every_zoo_loss_trains_through_compress(tmp_path, tiny_teacher_files, capsys):
    from compressor.distill.losses import LOSSES

    out = tmp_path / "run"
    losses = ",".join(f"{name}:0.1" for name in LOSSES.names())
    code = main(["--teacher", str(tiny_teacher_files["export"]), "--budget", "10s", "--trials", "2",
                 "--sizes", "1,0.5", "--losses", losses, "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(out)
    assert [x["name"] for x in m["training"]["losses"]] == LOSSES.names()
    assert all(h["loss"] is not None and h["loss"] == h["loss"] for h in m["training"]["history"])  # finite


def test_cuda_profile_runs_through_its_backend(tmp_path, tiny_teacher_files, monkeypatch, capsys):
    """--profile cuda-gpu times PyTorch modules on the GPU backend (a fake one here): every
    latency of the run goes through that backend, none through ONNX Runtime."""
    from compressor import prune as P
    from compressor.hardware import backends
    from compressor.hardware.timing import measure_timed_run

    class FakeGpu:
        name = "torch-cuda"
        timed: list[str] = []

        def unavailable_reason(self):
            return None

        def measure(self, artifact, profile, input_shape, progress=False):
            assert not isinstance(artifact, (str, os.PathLike)), "a torch-cuda profile times modules, not files"
            ms = 0.01 + P.count_macs(artifact, torch.zeros(1, *input_shape)) / 1e8
            self.timed.append(type(artifact).__name__)
            return measure_timed_run(lambda: ms / 1e3, profile, {"backend": "fake-gpu"})

    import torch

    monkeypatch.setitem(backends._BACKENDS, "torch-cuda", FakeGpu())
    out = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["state_dict"]), "--arch", "tiny_models:make_tiny",
                 "--budget", "10s", "--profile", "cuda-gpu", "--method", "skeleton", "--sizes", "0.5",
                 "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(out)
    lat = m["models"][0]["latency"]["cuda-gpu"]
    assert lat["measured"] and lat["env"]["backend"] == "fake-gpu"
    assert m["verification"] == []  # nothing to re-measure in a fresh process for a module-timed profile
    assert FakeGpu.timed


@pytest.mark.parametrize("saved, refused", [({"verify_top": 0}, True), ({"anchor_students": 2}, True), ({}, False)])
def test_resume_keeps_the_checks_before_training(tmp_path, saved, refused):
    """verify_top and anchor_students shape the stored records a resume reuses; an older run folder
    without them was made with the defaults."""
    from compressor.config import resolve_config
    from compressor.errors import ConfigError
    from compressor.pipeline import _check_resume_config

    cfg = resolve_config({}, {"teacher": "t.pt", "budget": "1ms", "out": str(tmp_path / "run")})
    run = tmp_path / "run"
    run.mkdir()
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("verify_top", "anchor_students")}
    (run / "config.json").write_text(json.dumps({**old, **saved}))
    if refused:
        with pytest.raises(ConfigError, match="cannot resume .*" + next(iter(saved))):
            _check_resume_config(run, cfg)
    else:
        _check_resume_config(run, cfg)
