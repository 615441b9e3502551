"""An instant cached run (issue 16, point 2): a `bench run --grid smoke` whose 20 cells are all
stored, and a `bench run --grid paper --dry-run --no-estimate` without the Kvasir data, against
`bench --help` and the first smoke run, all in fresh processes, in one run.

Targets: the cached run takes <= 3x the wall time of `bench --help` and <= 3% of the first smoke
run; the paper dry run <= 3x `bench --help`. The first smoke run is timed once (it trains the
grid); the others ROUNDS times, interleaved so that a change in the machine's load hits each
alike, and compared by their medians.

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_cached_run.py -o addopts="" -s
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.device_venv import ROOT

ROUNDS = 5
HELP_RATIO = 3.0
FIRST_RUN_SHARE = 0.03


def timed(*args: object, env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600, check=False,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return seconds, proc.stdout


def test_cached_smoke_run_takes_about_as_long_as_help(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, output = timed("run", "--grid", "smoke", "--store", store, "--quiet")
    cells = output.split(" ran, 0 cached", 1)[0]
    assert cells.isdigit() and int(cells) > 0, output
    times: dict[str, list[float]] = {"help": [], "cached": [], "dry_run": []}
    no_data = {"MEDQ_CACHE": str(tmp_path / "empty-cache")}
    for _ in range(ROUNDS):
        times["help"].append(timed("--help")[0])
        seconds, output = timed("run", "--grid", "smoke", "--store", store, "--quiet")
        assert output.startswith(f"0 ran, {cells} cached"), output
        times["cached"].append(seconds)
        seconds, output = timed("run", "--grid", "paper", "--dry-run", "--no-estimate",
                                "--store", tmp_path / "paper", env=no_data)
        assert "is not available here" in output, output
        times["dry_run"].append(seconds)
    help_s, cached_s, dry_s = (statistics.median(times[k]) for k in ("help", "cached",
                                                                        "dry_run"))
    print(f"\nfirst smoke run {first:.2f} s; medians of {ROUNDS}: bench --help {help_s:.3f} s, "
          f"cached smoke run {cached_s:.3f} s ({cached_s / help_s:.2f}x help, "
          f"{100 * cached_s / first:.2f}% of the first run), paper dry run without data "
          f"{dry_s:.3f} s ({dry_s / help_s:.2f}x help); cores {os.cpu_count()}")
    assert cached_s <= HELP_RATIO * help_s, times
    assert cached_s <= FIRST_RUN_SHARE * first, (first, times)
    assert dry_s <= HELP_RATIO * help_s, times
