"""Machine fingerprint: what a latency figure depends on, and a short stable hash of it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import psutil

from bench.provenance import installed_versions

FLAGS_OF_INTEREST = frozenset(
    {
        "avx",
        "avx2",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_int8",
        "amx_bf16",
        "fma",
        "f16c",
        "sse4_2",
        "neon",
        "asimd",
        "asimddp",
        "asimdhp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
    }
)
PACKAGES = ("onnxruntime", "openvino", "onnx", "numpy", "torch", "brevitas")
BOARD_MODEL = Path("/proc/device-tree/model")
CPUINFO = Path("/proc/cpuinfo")
HASH_KEY = "hash"


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _cpu_model(info: dict[str, str]) -> str:
    for key in ("model name", "hardware", "model", "cpu model"):
        if info.get(key):
            return info[key]
    return platform.processor() or platform.machine()


def _cpu_flags(info: dict[str, str]) -> list[str]:
    flags = set((info.get("flags") or info.get("features") or "").split())
    found = flags & FLAGS_OF_INTEREST
    if "asimd" in found:
        found.add("neon")
    return sorted(found)


def _board_model() -> str | None:
    if BOARD_MODEL.is_file():
        return BOARD_MODEL.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    return None


EMULATED_ENV = "MEDQ_EMULATED"
X86_VENDORS = frozenset({"GenuineIntel", "AuthenticAMD", "HygonGenuine"})
ARM_MACHINES = frozenset({"aarch64", "arm64", "armv7l", "armv8l"})


def is_emulated(machine: str | None = None, info: dict[str, str] | None = None,
                env: dict[str, str] | None = None) -> bool:
    """Whether this process runs under user-mode emulation (qemu-user): an ARM interpreter
    reading an x86 host's /proc/cpuinfo (qemu passes the host's through), or MEDQ_EMULATED=1
    (set by scripts/arm64_device.sh, for emulators that fake cpuinfo)."""
    env = os.environ if env is None else env
    if env.get(EMULATED_ENV, "") == "1":
        return True
    machine = (machine or platform.machine()).lower()
    info = _cpuinfo() if info is None else info
    return machine in ARM_MACHINES and info.get("vendor_id") in X86_VENDORS


def _providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def fingerprint_hash(fingerprint: dict) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of ``fingerprint`` (minus its hash)."""
    body = {k: v for k, v in fingerprint.items() if k != HASH_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def machine_fingerprint() -> dict:
    """CPU model and flags, cores, RAM, OS, board, package versions and ORT providers.

    Only slowly changing facts are included (no load or free memory), so the ``hash``
    entry stays the same across runs on one machine with one software stack.
    """
    info = _cpuinfo()
    fingerprint = {
        "cpu_model": _cpu_model(info),
        "machine": platform.machine(),
        "cpu_flags": _cpu_flags(info),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.system(),
        "os_release": platform.release(),
        "libc": " ".join(platform.libc_ver()).strip(),
        "python": platform.python_version(),
        "board_model": _board_model(),
        "packages": installed_versions(PACKAGES),
        "onnxruntime_providers": _providers(),
        "emulated": is_emulated(info=info),
    }
    fingerprint[HASH_KEY] = fingerprint_hash(fingerprint)
    return fingerprint
