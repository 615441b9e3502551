"""Wall time of the smoke grid, of its cached re-run (which must train nothing), and how well
the dry run's estimate foresaw the first.

Run with `make bench`. Each `bench` command runs in its own process, as a user runs it, and
in this order: two dry-run estimates one after the other (they must agree within 20%), the
grid (one round: it fills the store; its estimate must be within 25% of its wall time), the
cached re-run. On a loaded machine the estimate and the run see different loads: judge the
targets on a quiet one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_helpers import ROOT

ESTIMATE_LINE = re.compile(r"estimated total: [0-9.]+ h \(([0-9]+) s\)")
AGREE = 0.20      # two estimates, one after the other
ACCURATE = 0.25   # the estimate against the run's wall time
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-bench") / "store"


def bench(*args: str | Path) -> tuple[str, float]:
    """A `bench` command's output and wall time."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, wall


def estimated_seconds(store: Path) -> float:
    output, _ = bench("run", "--grid", "smoke", "--store", store, "--dry-run")
    flat = " ".join(output.split())
    print("\n" + "\n".join(line for line in output.splitlines()
                           if line.startswith(("compute:", "estimated total:", "assumed:"))))
    return float(ESTIMATE_LINE.search(flat)[1])


def run_smoke(store: Path) -> str:
    output, wall = bench("run", "--grid", "smoke", "--store", store, "--quiet")
    FIGURES.setdefault("first run s", wall)
    return output


def test_smoke_estimates_agree(store):
    first, second = estimated_seconds(store), estimated_seconds(store)
    FIGURES["estimate s"] = first
    print(f"two estimates of the smoke grid: {first:.0f} s and {second:.0f} s "
          f"({abs(first - second) / min(first, second):.0%} apart)")
    assert abs(first - second) <= AGREE * min(first, second)


def test_smoke_grid(benchmark, store):
    output = benchmark.pedantic(run_smoke, args=(store,), rounds=1, iterations=1)
    assert " 0 cached" in output


def test_smoke_estimate_against_the_run():
    if "estimate s" not in FIGURES or "first run s" not in FIGURES:
        pytest.skip("needs test_smoke_estimates_agree and test_smoke_grid run before it")
    estimate, wall = FIGURES["estimate s"], FIGURES["first run s"]
    print(f"smoke grid: estimated {estimate:.0f} s, ran in {wall:.0f} s "
          f"(estimate {estimate / wall - 1:+.0%})")
    assert abs(estimate - wall) <= ACCURATE * wall


def test_smoke_grid_cached(benchmark, store):
    output = benchmark.pedantic(run_smoke, args=(store,), rounds=1, iterations=1)
    assert output.startswith("0 ran")
