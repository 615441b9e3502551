"""scripts/arm64_device.sh: an emulated ARM64 device (qemu user mode) measuring a store.

The fast test checks that the script refuses clearly where emulation is not set up. The end to
end run (an arm64 userland, minutes even when cached) runs with MEDQ_SLOW=1 (`make test-slow`)
as root on a machine with binfmt_misc and qemu-aarch64 registered.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from tests.conftest import tiny_grid_dict
from tests.device_venv import ROOT

SCRIPT = ROOT / "scripts" / "arm64_device.sh"


def test_refuses_clearly_without_binfmt_misc(tmp_path):
    env = {**os.environ, "MEDQ_BINFMT": str(tmp_path / "no-binfmt")}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "binfmt_misc is not mounted" in done.stderr or "needs root" in done.stderr
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEDQ_SLOW") != "1", reason="end to end: MEDQ_SLOW=1")
def test_emulated_arm64_device_end_to_end(tmp_path, monkeypatch):
    if os.geteuid() != 0 or not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("needs root and qemu-aarch64 registered with binfmt_misc")
    grid = tiny_grid_dict(seeds=1, methods=[{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}],
                          stages={"deploy": {}})
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    monkeypatch.setenv("MEDQ_DEVICE", "ws")
    runner = CliRunner()
    assert runner.invoke(app, ["run", "--grid", str(tmp_path / "grid.yaml"), "--store",
                               str(tmp_path / "s"), "--quiet"]).exit_code == 0
    assert runner.invoke(app, ["measure", "--profile", "host", "--store", str(tmp_path / "s"),
                               "--batch-size", "1", "--quiet"]).exit_code == 0
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "s")], capture_output=True,
                          text=True, timeout=3600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    compared = runner.invoke(app, ["compare", "--store", str(tmp_path / "s"), "--devices",
                                   "ws,arm64-emulated", "--format", "json"])
    assert compared.exit_code == 0, compared.output
    for row in json.loads(compared.output)["rows"]:
        assert row["agreement@ws"] == 1.0 and row["agreement@arm64-emulated"] is not None
        assert row["emulated@arm64-emulated"] is True
