"""Wall time of one grid under the local, process (2 workers) and ray (2 CPUs) executors.

Run with `make bench` (or MEDQ_BENCH=1 and `pytest tests/benchmarks/test_bench_executors.py`).
Each executor runs the grid once into a fresh store, its start-up included (worker imports,
the local Ray cluster). The speed-up over local is printed (`-s`) and in each result's
extra_info (`--benchmark-json`), with the achieved concurrency (the cells' summed wall times
over the run's wall time): on a machine that other work loads, per-cell times stretch and the
speed-up with them, while the concurrency still shows whether the cells overlapped.

The grid is a stand-in for the smoke grid, small enough for a shared 2-core machine: the smoke
grid's data, training and stages with fp32, ptq W8A8, qat W8A8 and sgt, 2 seeds (8 cells).
MEDQ_BENCH_GRID=smoke runs the full smoke grid (20 cells) instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import load_grid
from bench.store import ResultsStore

EXECUTORS = ("local", "process", "ray")
WORKERS = 2
STAND_IN_METHODS = [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]},
                    {"name": "qat", "bits": [[8, 8]]}, {"name": "sgt"}]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.environ.get("MEDQ_BENCH_GRID") == "smoke":
        return "smoke"
    smoke = load_grid("smoke").model_dump(mode="json")
    smoke.update(name="smoke-stand-in", methods=STAND_IN_METHODS)
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(yaml.safe_dump(smoke))
    return str(path)


@pytest.fixture(scope="module")
def walls() -> dict[str, float]:
    return {}


def run_grid(grid: str, store: Path, executor: str) -> str:
    workers = [] if executor == "local" else ["--workers", str(WORKERS)]
    result = CliRunner().invoke(app, ["run", "--grid", grid, "--store", str(store), "--quiet",
                                      "--executor", executor, *workers],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("executor", EXECUTORS)
def test_grid_wall_time(benchmark, grid: str, walls: dict[str, float], executor: str,
                        tmp_path: Path) -> None:
    if executor == "ray":
        pytest.importorskip("ray")
    start = time.perf_counter()
    output = benchmark.pedantic(run_grid, args=(grid, tmp_path / "store", executor), rounds=1,
                                iterations=1)
    wall = walls[executor] = time.perf_counter() - start
    assert " 0 cached, 0 failed" in output
    cells = ResultsStore(tmp_path / "store").records()
    busy = sum((r.finished_at - r.started_at).total_seconds() for r in cells)
    speedup = walls["local"] / wall if "local" in walls else None
    benchmark.extra_info.update(executor=executor, workers=1 if executor == "local" else WORKERS,
                                cells=len(cells), wall_seconds=wall, cell_seconds=busy,
                                concurrency=busy / wall, speedup_vs_local=speedup,
                                cpus=os.cpu_count(), load_average=os.getloadavg())
    print(f"\n{executor}: {wall:.1f} s, {len(cells)} cells, cells' summed time {busy:.1f} s, "
          f"concurrency {busy / wall:.2f}"
          + (f", {speedup:.2f}x local" if speedup and executor != "local" else "")
          + f"; load average {os.getloadavg()[0]:.2f}")
