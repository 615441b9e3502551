"""The store writes a record only with complete artifacts, and never counts failures as done.

Tests taking `db_url` run on both backends: the default SQLite file and a private PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.store import CellRecord, ResultsStore, StoreBusyError


def record(cell_id="c1", status="ok", **kw):
    now = datetime.now(UTC)
    base = dict(cell_id=cell_id, parent_id=None, grid="g", dataset="d", backbone="b",
                method="fp32", w_bits=32, a_bits=32, seed=0, status=status, accuracy=0.5,
                macro_f1=0.4, train_seconds=1.0, split_manifest="m", metrics={}, config={},
                provenance={}, started_at=now, finished_at=now)
    return CellRecord(**{**base, **kw})


def test_commit_moves_artifacts_then_records(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    with store.staging("c1") as staged:
        (staged / "model.pt").write_text("weights")
        store.commit(record(), staged)
    assert (store.artifact_dir("c1") / "model.pt").read_text() == "weights"
    assert store.is_done("c1") and store.done_ids() == {"c1"}
    assert not list(store.staging_root.iterdir())


def test_crash_while_writing_artifacts_leaves_no_record(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    with pytest.raises(RuntimeError), store.staging("c1") as staged:
        (staged / "half.pt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert store.get("c1") is None
    assert not store.artifact_dir("c1").exists()
    assert not list(store.staging_root.iterdir())


def test_orphan_artifacts_without_record_are_replaced(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    orphan = store.artifact_dir("c1")
    orphan.mkdir()
    (orphan / "stale.pt").write_text("from a crash between rename and commit")
    assert not store.is_done("c1")
    with store.staging("c1") as staged:
        (staged / "model.pt").write_text("new")
        store.commit(record(), staged)
    assert sorted(p.name for p in orphan.iterdir()) == ["model.pt"]


def test_failed_cell_is_stored_but_not_done(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    store.commit(record(status="failed", error="boom", accuracy=None))
    assert store.get("c1").error == "boom"
    assert not store.is_done("c1")
    store.commit(record())
    assert store.is_done("c1") and len(store.records()) == 1


def test_stale_staging_is_cleared_and_run_lock_is_exclusive(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    (store.staging_root / "c9-dead").mkdir()
    with store.run_lock():
        assert not list(store.staging_root.iterdir())
        with pytest.raises(StoreBusyError), ResultsStore(tmp_path, db_url).run_lock():
            pass


def test_rows_have_the_public_columns(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    store.commit(record())
    row = store.rows()[0]
    for column in ("cell_id", "dataset", "backbone", "method", "w_bits", "a_bits", "seed",
                   "status", "accuracy", "macro_f1", "train_seconds"):
        assert column in row


OUTSIDE_READER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
print(connection.execute("select count(*) from cells").fetchone()[0])
connection.close()
"""


def _read_outside(database) -> int:
    """The stored cell count as another process (`bench results`, sqlite3) sees it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", OUTSIDE_READER, str(database)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_another_reader_during_a_run_loses_no_commit(tmp_path):
    """A second store opened in the writing process (the local executor opens one per worker)
    once read the database file with Python's open(); closing that file dropped the process's
    POSIX locks on it, so an outside reader's close took SQLite's exclusive lock, checkpointed
    and deleted the writer's WAL, and every later commit went to the deleted file: a `bench
    results` during a `bench run` lost the rest of the run."""
    store = ResultsStore(tmp_path)
    store.commit(record("c1"))
    ResultsStore(tmp_path)
    assert _read_outside(store.root / "medq.sqlite") == 1
    store.commit(record("c2"))
    assert _read_outside(store.root / "medq.sqlite") == 2
    store.engine.dispose()
    assert _read_outside(store.root / "medq.sqlite") == 2


def test_records_from_before_the_probability_columns_read_them_as_null(tmp_path):
    """A record stored before ECE/Brier/AUROC existed (its deploy stage without them, no
    `evaluation` entry) lists every probability column, as None."""
    from bench.store.evaluation import EVALUATION_COLUMNS

    store = ResultsStore(tmp_path)
    old = record(metrics={"deploy": {"columns": {"deployed_accuracy": 0.5}}})
    with store.staging("c1") as staged:
        store.commit(old, staged)
    (row,) = store.rows()
    assert row["deployed_accuracy"] == 0.5
    assert {c: row[c] for c in (*EVALUATION_COLUMNS, "deployed_macro_f1")} == dict.fromkeys(
        (*EVALUATION_COLUMNS, "deployed_macro_f1"))
