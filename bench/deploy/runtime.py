"""The ONNX Runtime session settings a deployed model is evaluated, counted and timed with.

Which integer kernels run is a named choice, ``kernels`` (``KERNELS``), resolved on the machine
that runs the session:

- ``exact`` (the default): every integer product is exact. On x86 CPUs without VNNI (SSE4.1,
  AVX2, AVX-512 without VNNI) ONNX Runtime's U8S8 kernels add two uint8 x int8 products in a
  saturating int16 (``vpmaddubsw``); ``session.x64quantprecision=1`` (ONNX Runtime's
  ``kOrtSessionOptionsAvx2PrecisionMode``) makes its ``Avx2WeightS8ToU8Transformer`` move the
  int8 weights of each QLinearConv/QGemm/QLinearMatMul whose weights leave [-64, 64] to uint8,
  so that layer runs the exact but slower U8U8 kernels (layers whose weights fit 7 bits keep
  U8S8, where two products cannot reach 2^15). On CPUs with VNNI (or AMX) U8S8 is exact
  already (``vpdpbusd`` sums in int32) and the same key would only swap the VNNI kernels for
  slower U8U8 ones (ONNX Runtime enables the rewrite wherever its U8U8 and U8S8 dispatches
  differ, VNNI or not), so it is left off there; on ARM it does nothing.
- ``fast``: plain U8S8 everywhere. The same results where U8S8 is exact; on x86 without VNNI,
  layers with 8-bit weights may saturate, so outputs can differ from the fake-quant model (the
  deploy stage measures by how much: ``fast_kernels_agreement``).

The deploy stage evaluates with ``exact`` and records it as ``kernel_policy`` with the resolved
``session_config`` and ``u8s8_saturates``; ``bench measure`` resolves the hardware profile's
``kernels`` on the measuring machine and records the same three with each measurement.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import onnxruntime as ort

Kernels = Literal["exact", "fast"]
KERNELS: dict[str, str] = {
    "exact": "exact integer products on every CPU (U8U8 for layers with 8-bit weights on x86 "
             "without VNNI, plain kernels elsewhere)",
    "fast": "ONNX Runtime's default U8S8 kernels: int16 pair sums saturate on x86 without VNNI",
}
DEFAULT_KERNELS: Kernels = "exact"
X64_PRECISION_KEY = "session.x64quantprecision"
EXACT_U8S8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""CPU flags with which ONNX Runtime's x86 U8S8 kernels sum in int32 (no saturation)."""
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where there is no such file."""
    if not CPUINFO.is_file():
        return None
    for line in CPUINFO.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def u8s8_saturates(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether ONNX Runtime's U8S8 kernels saturate on this CPU: x86 without VNNI or AMX.
    Defaults read this machine; an x86 CPU whose flags cannot be read counts as saturating."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False
    flags = cpu_flags() if flags is None else flags
    return flags is None or not flags & EXACT_U8S8_FLAGS


def session_config(kernels: str = DEFAULT_KERNELS, saturates: bool | None = None
                   ) -> dict[str, str]:
    """Session config entries that give ``kernels`` on a CPU whose U8S8 kernels saturate or
    not (default: this machine)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels {kernels!r}: choose one of {', '.join(KERNELS)}")
    saturates = u8s8_saturates() if saturates is None else saturates
    precise = kernels == "exact" and saturates
    return {X64_PRECISION_KEY: "1" if precise else "0"}


def session_options(config: Mapping[str, str] | None = None) -> ort.SessionOptions:
    """Session options with ``config`` entries (default: ``exact`` kernels on this machine),
    warnings off."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (session_config() if config is None else config).items():
        options.add_session_config_entry(key, value)
    return options
