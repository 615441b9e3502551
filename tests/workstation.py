"""A workstation store for the device tests: two deployed cells (FP32, PTQ W8A8) made and
measured on device "ws"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from tests.conftest import tiny_grid_dict


def quick_profile(repetitions: int) -> str:
    """A profile that times ``repetitions`` runs after one warm-up, with no minimum duration."""
    return (f'description = "quick"\nwarmup = 1\nmin_repetitions = {repetitions}\n'
            "min_duration_s = 0.0\n")


def bench(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def make_workstation(tmp: Path, profile: str) -> Path:
    """Run the two-cell grid with a deploy stage into ``tmp/s`` and measure it under
    ``profile`` (written to ``tmp/quick.toml``), as device "ws"; returns ``tmp``."""
    grid = tiny_grid_dict(seeds=1, methods=[{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}],
                          stages={"deploy": {}})
    (tmp / "grid.yaml").write_text(yaml.safe_dump(grid))
    (tmp / "quick.toml").write_text(profile)
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDQ_DEVICE", "ws")
    try:
        result = bench("run", "--grid", tmp / "grid.yaml", "--store", tmp / "s", "--quiet")
        assert result.exit_code == 0, result.output
        result = bench("measure", "--profile", tmp / "quick.toml", "--store", tmp / "s",
                       "--quiet")
        assert result.exit_code == 0, result.output
    finally:
        mp.undo()
    return tmp
