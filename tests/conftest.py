"""Shared fixtures: a private data cache, tiny grids, a CLI runner, and a private PostgreSQL
server with `db_url`, which runs a test on both store backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from tests.postgres import PostgresServer, PostgresUnavailable, new_server


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never read or write the user's ~/.cache, nor sign with the user's key, from tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDQ_CACHE", str(tmp_path_factory.mktemp("medq-cache")))
    mp.setenv("MEDQ_SIGNING_KEY", str(tmp_path_factory.mktemp("no-key") / "signing-key.pem"))
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


def killable_grid_dict(**changes: Any) -> dict[str, Any]:
    """A tiny grid whose cells take about a second each (with ``tiny_grid_dict``'s 96 images
    they took 0.15 s on a fast 2-core machine, and a run ended before its kill could land):
    for tests that kill a run after its first stored cell."""
    dataset = {"name": "synthetic", "image_size": 16,
               "options": {"num_classes": 3, "num_images": 768}}
    return tiny_grid_dict(**{"datasets": [dataset],
                             "train": {"epochs": 3, "batch_size": 16, "lr": 0.003}, **changes})


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the whole session; skipped when PostgreSQL is missing,
    unless MEDQ_REQUIRE_POSTGRES=1 (set by CI), which turns the skip into a failure."""
    try:
        server = new_server()
    except PostgresUnavailable as err:
        if os.environ.get("MEDQ_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"MEDQ_REQUIRE_POSTGRES=1 but {err}")
        pytest.skip(str(err))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The store's database on each backend: None (its default SQLite file) or PostgreSQL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Quantising and exporting run many tiny ops: one torch thread, as the deploy stage does
    (several threads also split a batch's convolutions differently, which moves fake-quantised
    values across rounding boundaries)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
