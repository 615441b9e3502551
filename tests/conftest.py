"""Shared fixtures: a private data cache, tiny grids, and a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never read or write the user's ~/.cache from tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDQ_CACHE", str(tmp_path_factory.mktemp("medq-cache")))
    yield
    mp.undo()


def tiny_grid_dict(**changes: Any) -> dict[str, Any]:
    """A grid that runs in seconds: 16x16 synthetic images, small CNN, one epoch."""
    grid: dict[str, Any] = {
        "name": "tiny",
        "datasets": [{"name": "synthetic", "image_size": 16,
                      "options": {"num_classes": 3, "num_images": 96}}],
        "backbones": ["smallcnn"],
        "methods": [{"name": "fp32"}],
        "seeds": 2,
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.003},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 0.0005},
        "calibration_batches": 2,
    }
    grid.update(changes)
    return grid


@pytest.fixture
def write_grid(tmp_path: Path) -> Callable[..., Path]:
    def write(**changes: Any) -> Path:
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump(tiny_grid_dict(**changes)))
        return path
    return write


@pytest.fixture
def cli() -> Callable[..., Any]:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return invoke
