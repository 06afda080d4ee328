"""Hardware profiles: every built-in file loads; every kind of bad file is a one-line ConfigError."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compressor.errors import ConfigError
from compressor.hardware import (
    DEFAULT_PROFILE,
    list_profiles,
    load_profile,
    override_profile,
    profiles_dir,
    round_channels,
)
from compressor.hardware.profiles import PROFILES_ENV

BUILTIN_FILES = sorted(profiles_dir().glob("*.toml"))

GOOD = """\
name = "{name}"
backend = "onnxruntime-cpu"
threads = 1
repeats = 5
"""

PREDICTED = """\
name = "edge"
backend = "tensorrt"
measured = false
precision = "fp16"

[device]
peak_gflops = {{ fp16 = 1000.0 }}
memory_bandwidth_gbs = 50.0
layer_overhead_us = 5.0
{extra}
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtins_exist() -> None:
    names = {p.stem for p in BUILTIN_FILES}
    assert {"host-cpu-1t", "host-cpu", "cuda-gpu"} <= names
    assert sum(not load_profile(n).measured for n in names) >= 3  # edge/server targets we can only predict


@pytest.mark.parametrize("path", BUILTIN_FILES, ids=lambda p: p.stem)
def test_every_builtin_profile_loads_and_is_consistent(path: Path) -> None:
    by_name = load_profile(path.stem)
    by_path = load_profile(str(path))
    assert by_name == by_path
    assert by_name.name == path.stem
    assert by_name.round_to >= 1 and by_name.repeats >= 1 and by_name.batch_size >= 1
    if not by_name.measured:
        assert by_name.device is not None
        assert by_name.precision in by_name.device.peak_gflops
        assert "predicted" in by_name.description
        # honest figures are cited in the file itself
        assert "Source" in path.read_text() or "source" in path.read_text()


def test_default_profile_is_single_thread_host_cpu() -> None:
    p = load_profile(DEFAULT_PROFILE)
    assert p.name == "host-cpu-1t" and p.backend == "onnxruntime-cpu" and p.threads == 1 and p.measured
    assert load_profile("host-cpu").threads == 0  # all cores


def test_list_profiles_sorted_by_name() -> None:
    names = [p.name for p in list_profiles()]
    assert names == sorted(names) and "host-cpu-1t" in names


def test_load_by_path(tmp_path: Path) -> None:
    p = load_profile(str(write(tmp_path, GOOD.format(name="mine"))))
    assert (p.name, p.repeats, p.threads, p.stat) == ("mine", 5, 1, "p50")
    assert p.path.endswith("p.toml")


def test_profiles_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, GOOD.format(name="only-here"), "only-here.toml")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    assert profiles_dir() == tmp_path
    assert [p.name for p in list_profiles()] == ["only-here"]


def test_builtin_profiles_ship_inside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # an installed wheel has only the package: the profiles must live in it and be package data
    import fnmatch
    import sys

    import compressor

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    monkeypatch.delenv(PROFILES_ENV, raising=False)
    package = Path(compressor.__file__).resolve().parent
    folder = profiles_dir()
    assert folder.resolve() == package / "profiles"
    files = sorted(folder.glob("*.toml"))
    assert DEFAULT_PROFILE in {f.stem for f in files}
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():  # source tree only
        globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["compressor"]
        for f in files:
            rel = f.relative_to(package).as_posix()
            assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data in pyproject.toml"


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="unknown hardware profile 'host-cpu-1'.*did you mean.*host-cpu"):
        load_profile("host-cpu-1")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{path}: hardware profile file not found"):
        load_profile(str(path))


def test_name_must_match_file_for_lookup_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, GOOD.format(name="other"), "mine.toml")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="mine.toml: key 'name' must equal the file name 'mine'"):
        load_profile("mine")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("repeat = 5", r"unknown key 'repeat'; did you mean 'repeats'\?"),
        ('stat = "p95"', r"key 'stat' must be one of p50, p90, p99 but got 'p95'"),
        ("threads = -1", r"key 'threads' must be at least 0 but got -1"),
        ('threads = "four"', r"key 'threads' must be an integer but got string 'four'"),
        ("threads = true", r"key 'threads' must be an integer but got boolean True"),
        ("batch_size = 0", r"key 'batch_size' must be at least 1 but got 0"),
        ("min_seconds = -0.5", r"key 'min_seconds' must be at least 0 but got -0.5"),
        ('warmup_seconds = "fast"', r"key 'warmup_seconds' must be a number but got string 'fast'"),
        ('measured = "yes"', r"key 'measured' must be true or false but got string 'yes'"),
        ('precision = "fp16"', r"key 'precision' must be one of fp32, int8 for backend 'onnxruntime-cpu'"),
        ("round_to = 0", r"key 'round_to' must be a positive integer or \"auto\" but got integer 0"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, extra: str, message: str) -> None:
    text = GOOD.format(name="p").replace("threads = 1\nrepeats = 5\n", "") + extra + "\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_profile(str(path))
    assert str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("bandwidth = 3.0", r"unknown key 'device.bandwidth'"),
        ("", None),
    ],
)
def test_device_table_is_validated(tmp_path: Path, extra: str, message: str | None) -> None:
    path = write(tmp_path, PREDICTED.format(extra=extra))
    if message is None:
        p = load_profile(str(path))
        assert p.device is not None and p.device.peak_gflops == {"fp16": 1000.0} and not p.measured
    else:
        with pytest.raises(ConfigError, match=message):
            load_profile(str(path))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("fp16 = 1000.0", "fp16 = -1.0", r"key 'device.peak_gflops.fp16' must be greater than 0"),
        ("fp16 = 1000.0", "fp8 = 1.0", r"unknown key 'device.peak_gflops.fp8'"),
        ("fp16 = 1000.0", "fp32 = 1.0", r"missing required key 'device.peak_gflops.fp16'"),
        ("memory_bandwidth_gbs = 50.0", "memory_bandwidth_gbs = 0", r"'device.memory_bandwidth_gbs' must be "
                                                                     r"greater than 0"),
        ("layer_overhead_us = 5.0\n", "", r"missing required key 'device.layer_overhead_us'"),
    ],
)
def test_bad_device_values(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write(tmp_path, PREDICTED.format(extra="").replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_profile(str(path))


def test_predicted_profile_needs_device(tmp_path: Path) -> None:
    text = PREDICTED.format(extra="").split("[device]")[0]
    with pytest.raises(ConfigError, match="missing required key 'device'"):
        load_profile(str(write(tmp_path, text)))


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required key 'backend'"):
        load_profile(str(write(tmp_path, 'name = "x"\n')))


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x\n')
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_profile(str(path))


def test_round_to_auto_only_for_host_cpu(tmp_path: Path) -> None:
    assert load_profile("host-cpu-1t").round_to in (8, 16)
    path = write(tmp_path, PREDICTED.format(extra="").replace('precision = "fp16"', 'precision = "fp16"\n'
                                                                                    'round_to = "auto"'))
    with pytest.raises(ConfigError, match="round_to' may be \"auto\" only"):
        load_profile(str(path))


def test_override_profile_validates() -> None:
    base = load_profile("host-cpu-1t")
    quick = override_profile(base, repeats=3, min_seconds=0.0, stat="p90")
    assert (quick.repeats, quick.min_seconds, quick.stat) == (3, 0.0, "p90")
    assert dataclasses.replace(quick, repeats=base.repeats, min_seconds=base.min_seconds, stat="p50") == base
    with pytest.raises(ConfigError, match="key 'repeats' must be at least 1"):
        override_profile(base, repeats=0)
    with pytest.raises(ConfigError, match="unknown key 'repetitions'"):
        override_profile(base, repetitions=3)


@pytest.mark.parametrize(("c", "multiple", "expected"),
                         [(1, 8, 8), (4, 8, 8), (11, 8, 8), (12, 8, 16), (13, 8, 16), (64, 8, 64),
                          (100, 16, 96), (104, 16, 112), (0, 8, 8), (7.6, 4, 8), (5, 1, 5)])
def test_round_channels(c: float, multiple: int, expected: int) -> None:
    assert round_channels(c, multiple) == expected


def test_round_channels_rejects_bad_multiple() -> None:
    with pytest.raises(ValueError, match="multiple must be a positive integer"):
        round_channels(10, 0)


def test_isa_names_the_int8_target_of_a_predicted_profile(tmp_path: Path) -> None:
    assert load_profile("raspberry-pi-5").isa == "arm-dotprod"
    assert load_profile("host-cpu-1t").isa == ""  # measured: the host's CPU is read instead
    text = PREDICTED.format(extra="").replace('measured = false', 'measured = false\nisa = "arm-dotprd"')
    with pytest.raises(ConfigError, match="key 'isa' must be one of .* \\(did you mean 'arm-dotprod'\\?\\)"):
        load_profile(str(write(tmp_path, text)))
    with pytest.raises(ConfigError, match="key 'isa' is for predicted profiles"):
        load_profile(str(write(tmp_path, GOOD.format(name="p") + 'isa = "x86-vnni"\n')))
