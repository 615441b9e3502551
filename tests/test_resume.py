"""A run killed with SIGKILL mid-grid and run again loses no cell and duplicates none."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import yaml

from tests.conftest import killable_grid_dict


def ok_count(db, timeout: float = 1) -> int | None:
    """Cells stored ok; 0 before the store exists, None while it cannot be read (not yet
    created, or locked by the run)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=timeout) as con:
            return con.execute("select count(*) from cells where status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return None


def settled_ok_count(db) -> int:
    """ok_count after the run is dead, retried until the store can be read (the next reader
    recovers the killed writer's WAL)."""
    deadline = time.monotonic() + 60
    while (count := ok_count(db, timeout=10)) is None:
        assert time.monotonic() < deadline, f"{db} stayed unreadable after the kill"
        time.sleep(0.2)
    return count


def test_sigkill_then_resume(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(killable_grid_dict(seeds=4)))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--grid", str(grid), "--store", str(store),
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while (ok_count(store / "medq.sqlite") or 0) < 1 and proc.poll() is None:
        assert time.monotonic() < deadline, "first cell never finished"
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = settled_ok_count(store / "medq.sqlite")
    assert 1 <= killed_at < 4, "the kill must land mid-grid"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{4 - killed_at} ran, {killed_at} cached, 0 failed" in done.stdout

    with sqlite3.connect(store / "medq.sqlite") as con:
        rows = con.execute("select cell_id, status, artifacts from cells").fetchall()
    assert len(rows) == 4 and {r[1] for r in rows} == {"ok"}
    cells = sorted(r[0] for r in rows)
    folders = sorted(p.name for p in (store / "artifacts").iterdir() if p.name != ".staging")
    assert folders == cells
    assert not list((store / "artifacts" / ".staging").iterdir())
    for cell in cells:
        assert {"model.pt", "predictions.npz", "split.json", "metrics.json"} <= {
            p.name for p in (store / "artifacts" / cell).iterdir()}
