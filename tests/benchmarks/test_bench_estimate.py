"""How long the dry-run estimate takes: a first call times every kind of cell; a second one, on
the same machine and software, must answer from the cache in under SECOND_CALL_S.

Run with `make bench`. Each `bench` command runs in its own process with a private
`$MEDQ_CACHE` (empty before the first call), as a user runs it. The second call's figure
includes starting Python and importing torch, so judge it on a quiet machine.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_helpers import ROOT

SECOND_CALL_S = 5.0
COMPUTE = re.compile(r"compute: [0-9.]+ h \(([0-9]+) s\)")
ESTIMATE_LINE = re.compile(r"estimated total: .*? cells [0-9]+ s\)")


def dry_run(grid: str, store: Path, cache: Path, *extra: str) -> tuple[str, float]:
    """The dry run's output and wall time; prints its CPU time too (a loaded machine's wall
    time says little)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--grid", grid, "--store",
                           str(store), "--dry-run", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600, check=False,
                          env={**os.environ, "MEDQ_CACHE": str(cache)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"\n{grid} dry run{' ' if extra else ''}{' '.join(extra)}: {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU, load average {os.getloadavg()[0]:.1f}")
    assert done.returncode == 0, done.stdout + done.stderr
    return " ".join(done.stdout.split()), wall


@pytest.mark.parametrize("grid", ["smoke", "paper"])
def test_a_second_dry_run_answers_from_the_cache(grid: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, first_s = dry_run(grid, tmp_path / "s", cache)
    second, second_s = dry_run(grid, tmp_path / "s", cache)
    compute = COMPUTE.search(first)[1]
    print(f"\n{grid}: first dry run {first_s:.1f} s, second {second_s:.1f} s; compute "
          f"{compute} s; {ESTIMATE_LINE.search(second)[0]}")
    assert "measured by an earlier dry run" not in first
    assert "measured by an earlier dry run" in second
    assert COMPUTE.search(second)[1] == compute   # the same cells' costs, from the cache
    assert second_s < SECOND_CALL_S
