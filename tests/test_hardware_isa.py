"""CPU classification for INT8: fake flag sets for every class, and the host's own."""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from compressor.hardware import CPU_CLASSES, classify, host_cpu_class
from compressor.hardware import isa

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 fma avx avx2 bmi2"  # this EPYC's INT8-relevant flags
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl"


@pytest.mark.parametrize(("flags", "machine", "expected"), [
    pytest.param(AVX512 + " avx512_vnni", "x86_64", "x86-vnni", id="avx512_vnni"),  # Cascade Lake+, Zen 4
    pytest.param(AVX2 + " avx_vnni", "x86_64", "x86-vnni", id="avx_vnni"),  # Alder Lake: VNNI without AVX-512
    pytest.param(AVX512, "x86_64", "x86-avx512", id="avx512-no-vnni"),  # Skylake-SP
    pytest.param(AVX2, "x86_64", "x86-avx2", id="avx2"),
    pytest.param(AVX2, "AMD64", "x86-avx2", id="avx2-windows-machine-name"),
    pytest.param("fpu sse sse2 ssse3 sse4_1", "x86_64", "x86-other", id="sse-only"),
    # avx512f without avx512bw has no byte/word ops for INT8 kernels.
    pytest.param("avx512f avx2", "x86_64", "x86-avx2", id="avx512f-without-bw"),
    pytest.param("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimdrdm asimddp i8mm", "aarch64",
                 "arm-dotprod", id="arm-asimddp"),
    pytest.param("fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", "aarch64", "arm-neon",
                 id="arm-no-asimddp"),  # Cortex-A72 (Raspberry Pi 4)
    pytest.param("asimd asimddp", "arm64", "arm-dotprod", id="arm-macos-machine-name"),
    pytest.param("", "aarch64", "arm-neon", id="arm-no-flags"),  # NEON is mandatory on ARMv8-A
    pytest.param(AVX512 + " avx512_vnni", "riscv64", "unknown", id="x86-flags-on-riscv"),
    pytest.param("", "ppc64le", "unknown", id="unknown-machine"),
    pytest.param("", "x86_64", "unknown", id="x86-flags-unreadable"),  # not known to lack AVX2
])
def test_classify_fake_flag_sets(flags: str, machine: str, expected: str) -> None:
    assert classify(flags.split(), machine) == expected


def test_classes_are_listed_and_features_are_recorded() -> None:
    assert len(set(CPU_CLASSES)) == len(CPU_CLASSES) == 7
    f = isa.cpu_features((AVX512 + " avx512_vnni").split(), "x86_64")
    assert (f.avx2, f.avx512, f.vnni, f.asimddp, f.cpu_class) == (True, True, True, False, "x86-vnni")
    g = isa.cpu_features("asimd asimddp i8mm".split(), "aarch64")
    assert (g.avx2, g.vnni, g.asimddp, g.i8mm, g.cpu_class) == (False, False, True, True, "arm-dotprod")


def test_host_cpu_class_reads_this_machine() -> None:
    cls = host_cpu_class()
    assert cls in CPU_CLASSES
    assert host_cpu_class() is cls  # cached
    if Path("/proc/cpuinfo").is_file():
        assert cls == classify(isa._host_flags(), platform.machine())


def test_host_flags_from_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512_vnni\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(isa, "_CPUINFO", x86)
    assert isa._host_flags() == {"fpu", "sse", "avx2", "avx512_vnni"}  # the first CPU's line
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n")
    monkeypatch.setattr(isa, "_CPUINFO", arm)
    assert classify(isa._host_flags(), "aarch64") == "arm-dotprod"
    monkeypatch.setattr(isa, "_CPUINFO", tmp_path / "absent")
    assert isa._host_flags() == set()


def test_isa_does_not_import_torch() -> None:
    """Serving hosts read their class without the training stack: load isa.py alone in a fresh interpreter."""
    import subprocess

    code = ("import importlib.util as u, sys\n"
            f"spec = u.spec_from_file_location('isa', {str(Path(isa.__file__))!r})\n"
            "m = u.module_from_spec(spec); sys.modules['isa'] = m; spec.loader.exec_module(m)\n"
            "assert m.host_cpu_class() in m.CPU_CLASSES\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
