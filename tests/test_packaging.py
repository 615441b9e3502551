"""The built distribution ships the harness, the methods, the grids, templates, profiles and
the store's migrations."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(ROOT), "-w", str(tmp_path)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("medq_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("bench/cli/__init__.py", "bench/grids/smoke.yaml", "bench/grids/paper.yaml",
                     "bench/grids/full.yaml", "bench/report/templates/report.html.j2",
                     "methods/base.py", "methods/pact_sgt.py", "hardware_profiles/host.toml",
                     "hardware_profiles/raspberry-pi-4.toml",
                     "hardware_profiles/raspberry-pi-5.toml", "bench/store/migrations/env.py",
                     "bench/store/migrations/versions/0001_initial.py",
                     "bench/store/migrations/versions/0003_server_tables.py",
                     "bench/store/migrations/versions/0004_signatures_and_audit.py",
                     "bench/server/routes/uploads.py", "bench/exchange/pull.py"):
        assert required in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "bench = bench.cli:app" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "results/", "reports/")) for n in names)
