"""The light device install (`medq-bench[device]`) against the full one this test runs in:
size on disk, `import bench.cli` time (``-X importtime``) and `bench --help` wall time.

Prints the figures and the ratios; checks only that the device venv is the smaller. Run with
`make bench`. Environment: MEDQ_BENCH_ROUNDS (5) runs per timing, the minimum is kept.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.device_venv import DeviceVenv, device_venv_fixture  # noqa: F401

ROUNDS = int(os.environ.get("MEDQ_BENCH_ROUNDS", "5"))


def size_on_disk(root: Path) -> int:
    """Bytes allocated to the files under ``root`` (as `du`), each hard-linked file once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def run(env: dict[str, str], cwd: Path, *command: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=True)
    return time.perf_counter() - start, proc.stderr


def import_seconds(env: dict[str, str], cwd: Path, bin_dir: Path) -> float:
    """Cumulative import time of bench.cli, the best of ROUNDS fresh interpreters."""
    best = float("inf")
    for _ in range(ROUNDS):
        _, stderr = run(env, cwd, str(bin_dir / "python"), "-X", "importtime", "-c",
                        "import bench.cli")
        line = next(ln for ln in stderr.splitlines() if re.search(r"\|\s*bench\.cli$", ln))
        best = min(best, int(line.split("|")[1]) / 1e6)
    return best


def help_seconds(env: dict[str, str], cwd: Path, bin_dir: Path) -> float:
    return min(run(env, cwd, str(bin_dir / "bench"), "--help")[0] for _ in range(ROUNDS))


def test_device_install_footprint(device_venv: DeviceVenv, tmp_path):
    full = DeviceVenv(Path(sys.prefix), device_venv.wheel, 0.0)
    rows = {}
    for label, venv in (("device", device_venv), ("full", full)):
        env = venv.env()
        rows[label] = (size_on_disk(venv.root), import_seconds(env, tmp_path, venv.bin),
                       help_seconds(env, tmp_path, venv.bin))
    print(f"\ndevice venv built in {device_venv.build_seconds:.1f} s (wheel, venv, pip install)")
    print(f"{'venv':8} {'size MiB':>9} {'import bench.cli ms':>20} {'bench --help ms':>16}")
    for label, (size, imported, helped) in rows.items():
        print(f"{label:8} {size / 2**20:9.1f} {imported * 1e3:20.1f} {helped * 1e3:16.1f}")
    (dev_size, dev_import, dev_help), (full_size, full_import, full_help) = rows.values()
    print(f"full/device: size {full_size / dev_size:.1f}x, import {full_import / dev_import:.2f}x,"
          f" --help {full_help / dev_help:.2f}x (full venv: {sys.prefix}, with test extras)")
    assert dev_size < full_size
