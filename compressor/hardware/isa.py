"""The host CPU's INT8-relevant instruction-set features, reduced to one class name.

INT8 accuracy depends on the CPU that runs the model, not only on the model: on x86
without VNNI, ONNX Runtime's u8*s8 kernels multiply with VPMADDUBSW (PMADDUBSW on
SSE), which adds pairs of products into a 16-bit lane and *saturates* when full-range
8-bit weights meet large activations. VNNI (VPDPBUSD) and ARM's dot-product (SDOT)
or widening NEON multiplies accumulate in 32 bits and never saturate. The class name
below is what `compressor.export.int8_settings_for` keys on.

Reading features is separated from classifying them (`classify` is pure) so tests
can feed the flag sets of CPUs this machine is not.

This module must stay importable without torch: it is read by export tooling that
runs on serving hosts.
"""
from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CPU_CLASSES", "CpuFeatures", "classify", "cpu_features", "host_cpu_class", "host_cpu_features"]

# Ordered from the x86 classes (best INT8 support first) to ARM, then "unknown".
CPU_CLASSES: tuple[str, ...] = (
    "x86-vnni", "x86-avx512", "x86-avx2", "x86-other", "arm-dotprod", "arm-neon", "unknown",
)

_X86_MACHINES = frozenset({"x86_64", "amd64", "x64", "i386", "i686", "x86"})
_ARM_MACHINES = frozenset({"aarch64", "arm64", "armv8l", "armv8b"})
_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """What INT8 kernels can use on one CPU, and the class that follows from it."""

    machine: str  # platform.machine(), lower-cased
    avx2: bool
    avx512: bool  # avx512f and avx512bw: the byte/word ops INT8 kernels need
    vnni: bool  # avx512_vnni or avx_vnni: 32-bit accumulating u8*s8 dot products
    asimddp: bool  # ARMv8.2 SDOT/UDOT
    i8mm: bool  # ARMv8.6 SMMLA: recorded for reports, not needed by the classification
    cpu_class: str


def classify(flags: Iterable[str], machine: str) -> str:
    """The `CPU_CLASSES` entry for a CPU with these /proc/cpuinfo flags (x86) or Features (ARM)."""
    return _features(flags, machine).cpu_class


def cpu_features(flags: Iterable[str], machine: str) -> CpuFeatures:
    """All INT8-relevant features of a CPU described by its flags and `platform.machine()`."""
    return _features(flags, machine)


@functools.cache
def host_cpu_features() -> CpuFeatures:
    """This machine's features, read once per process from /proc/cpuinfo and `platform.machine()`.

    A host without /proc/cpuinfo (macOS, Windows) is "unknown" on x86 — its vector
    extensions cannot be read here, and the unknown setting is accurate everywhere —
    but "arm-neon" on ARM64, where NEON is architecturally guaranteed.
    """
    return _features(_host_flags(), platform.machine())


@functools.cache
def host_cpu_class() -> str:
    """This machine's `CPU_CLASSES` entry, computed once per process."""
    return host_cpu_features().cpu_class


def _features(flags: Iterable[str], machine: str) -> CpuFeatures:
    f = {s.strip().lower() for s in flags}
    m = machine.strip().lower()
    x86, arm = m in _X86_MACHINES, m in _ARM_MACHINES
    avx2 = x86 and "avx2" in f
    avx512 = x86 and {"avx512f", "avx512bw"} <= f
    vnni = x86 and bool({"avx512_vnni", "avx_vnni"} & f)
    asimddp, i8mm = arm and "asimddp" in f, arm and "i8mm" in f
    if x86:
        # An x86 host whose flags could not be read at all is not known to lack AVX2.
        cls = ("x86-vnni" if vnni else "x86-avx512" if avx512 else "x86-avx2" if avx2
               else "x86-other" if f else "unknown")
    elif arm:
        cls = "arm-dotprod" if asimddp else "arm-neon"
    else:
        cls = "unknown"
    return CpuFeatures(machine=m, avx2=avx2, avx512=avx512, vnni=vnni, asimddp=asimddp, i8mm=i8mm,
                       cpu_class=cls)


def _host_flags() -> set[str]:
    """Flags of the first CPU in /proc/cpuinfo ("flags" on x86, "Features" on ARM); empty if unreadable."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()
