"""Wall time of the smoke grid and of its cached re-run (which must train nothing).

Run with `make bench`; each is one round: the first run fills the store, the second reads it.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.cli import app


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-bench") / "store"


def run_smoke(store) -> str:
    result = CliRunner().invoke(app, ["run", "--grid", "smoke", "--store", str(store),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_smoke_grid(benchmark, store):
    output = benchmark.pedantic(run_smoke, args=(store,), rounds=1, iterations=1)
    assert " 0 cached" in output


def test_smoke_grid_cached(benchmark, store):
    output = benchmark.pedantic(run_smoke, args=(store,), rounds=1, iterations=1)
    assert output.startswith("0 ran")
