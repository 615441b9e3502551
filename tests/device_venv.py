"""A fresh virtualenv holding only `pip install 'medq-bench[device]'` (no torch), as on a
Raspberry Pi: a wheel of this checkout installed with the pins of constraints.txt.

Import the fixture into a test module (`from tests.device_venv import device_venv_fixture`,
then ask for `device_venv`); the venv is built once per test session however many modules use
it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class DeviceVenv:
    """The device venv, where it lies, and how long it took to build."""

    root: Path
    wheel: Path
    build_seconds: float

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self) -> dict[str, str]:
        """This process's environment, switched to the venv; no path into the checkout."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return {**env, "VIRTUAL_ENV": str(self.root), "PYTHONNOUSERSITE": "1",
                "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}"}

    def run(self, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv (``"python"``, ``"bench"``...) outside the checkout."""
        program, *rest = args
        return subprocess.run([str(self.bin / program), *map(str, rest)], cwd=cwd or self.root,
                              env=self.env(), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, check=False)

    def bench(self, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("bench", *args, cwd=cwd)


def _check(command: list[str], what: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                          check=False, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def build_device_venv(where: Path) -> DeviceVenv:
    """Build a wheel of this checkout and install it with the `device` extra into a new venv."""
    start = time.perf_counter()
    wheels = where / "wheel"
    _check([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "-w", str(wheels), str(ROOT)], "building the wheel")
    (wheel,) = wheels.glob("medq_bench-*.whl")
    root = where / "venv"
    _check([sys.executable, "-m", "venv", str(root)], "creating the venv")
    # Outside the checkout and without its PYTHONPATH: pip must not take the checkout's
    # egg-info (left by building the wheel) for an installed medq-bench.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _check([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
            str(ROOT / "constraints.txt"), f"{wheel}[device]"], "installing medq-bench[device]",
           clean, where)
    return DeviceVenv(root, wheel, time.perf_counter() - start)


@functools.cache
def _built(base: Path) -> DeviceVenv:
    where = base / "device-venv"
    where.mkdir(exist_ok=True)
    return build_device_venv(where)


@pytest.fixture(scope="session", name="device_venv")
def device_venv_fixture(tmp_path_factory: pytest.TempPathFactory) -> DeviceVenv:
    """The session's device venv (built on first use)."""
    return _built(tmp_path_factory.getbasetemp())
