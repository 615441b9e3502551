"""Records leave a store as validated, hashable data; ingest is idempotent; old stores migrate.

Tests taking `db_url` run on both backends: the default SQLite file and a private PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bench.store import CellRecord, ResultsStore, migrate
from bench.store.artifacts import file_sha256
from bench.store.measurements import MeasurementRecord, save_measurement
from bench.store.records import (
    STORE_ONLY,
    CellData,
    MeasurementData,
    RecordBatch,
    exchange_fields,
    known_hashes,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def cell(cell_id: str = "c1", status: str = "ok", finished: datetime = T0, **kw) -> CellRecord:
    base = dict(cell_id=cell_id, parent_id=None, device="ws", grid="g", dataset="d",
                backbone="b", method="fp32", w_bits=32, a_bits=32, seed=0, status=status,
                accuracy=0.5, macro_f1=0.4, train_seconds=1.0, split_manifest="m",
                metrics={"deploy": {"columns": {"size_bytes": 10}, "x": float("nan")}},
                config={"lr": 0.1}, provenance={"host": "ws"}, started_at=T0,
                finished_at=finished)
    return CellRecord(**{**base, **kw})


def measurement(cell_id: str = "c1", device: str = "pi", p50: float = 2.0,
                finished: datetime = T0) -> MeasurementRecord:
    return MeasurementRecord(
        cell_id=cell_id, profile="host", device=device, machine="abc123", batch_size=1,
        status="ok", isolation="process", samples_s=[0.002, 0.0021], latency_ms_p50=p50,
        fingerprint={"cpu_model": "x"}, profile_config={"name": "host"}, details={},
        started_at=T0, finished_at=finished)


def stored(store: ResultsStore) -> RecordBatch:
    with Session(store.engine) as session:
        return RecordBatch(
            cells=[CellData.of(r) for r in session.scalars(select(CellRecord))],
            measurements=[MeasurementData.of(r) for r in
                          session.scalars(select(MeasurementRecord))])


def test_hash_survives_the_database_round_trip(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    with store.staging("c1") as staged:
        (staged / "model.onnx").write_bytes(b"onnx")
        store.commit(cell(), staged)
    save_measurement(store.engine, measurement())
    batch = stored(store)
    row = store.get("c1")
    assert row.artifact_hashes == {"model.onnx": file_sha256(store.artifact_dir("c1") /
                                                             "model.onnx")}
    assert batch.cells[0].content_hash() == row.record_hash
    with Session(store.engine) as session:
        m = session.scalars(select(MeasurementRecord)).one()
        assert batch.measurements[0].content_hash() == m.record_hash
        assert known_hashes(session, [row.record_hash, m.record_hash, "0" * 64]) == {
            row.record_hash, m.record_hash}
    assert batch.cells[0].metrics["deploy"]["x"] is None, "NaN is stored as null"
    assert batch.cells[0].started_at == T0.replace(tzinfo=None)


def test_ingest_is_idempotent_and_keeps_the_better_record(tmp_path, db_url):
    source = ResultsStore(tmp_path / "src")
    source.commit(cell("c1"))
    source.commit(cell("c2", status="failed", accuracy=None))
    save_measurement(source.engine, measurement())
    batch = stored(source)
    target = ResultsStore(tmp_path / "dst", db_url)
    first = target.ingest(batch)
    assert len(first.added) == 3
    again = target.ingest(batch)
    assert again.as_counts() == {"added": 0, "replaced": 0, "unchanged": 3, "stale": 0}
    assert {c.content_hash() for c in stored(target).cells} == {
        c.content_hash() for c in batch.cells}

    older_ok = CellData.of(cell("c2", finished=T0 - timedelta(days=1)))
    newer_failed = CellData.of(cell("c1", status="failed", finished=T0 + timedelta(days=1)))
    faster = MeasurementData.of(measurement(p50=1.0, finished=T0 + timedelta(hours=1)))
    result = target.ingest(RecordBatch(cells=[older_ok, newer_failed], measurements=[faster]))
    assert result.replaced == [older_ok.content_hash(), faster.content_hash()]
    assert result.stale == [newer_failed.content_hash()]
    assert target.get("c2").status == "ok" and target.get("c1").status == "ok"
    assert [m.latency_ms_p50 for m in stored(target).measurements] == [1.0]


def test_a_measurement_per_device_is_kept(tmp_path, db_url):
    store = ResultsStore(tmp_path, db_url)
    store.ingest(RecordBatch(measurements=[MeasurementData.of(measurement(device=d))
                                           for d in ("pi-1", "pi-2")]))
    assert sorted(m.device for m in stored(store).measurements) == ["pi-1", "pi-2"]


@pytest.mark.parametrize(("field", "value"), [
    ("device", "../etc"), ("device", ""), ("w_bits", 64), ("seed", -1), ("cell_id", "x" * 33),
    ("error", "nul\x00"), ("status", "done"), ("dataset", "d" * 65)])
def test_invalid_records_are_refused(field, value):
    data = CellData.of(cell()).model_dump()
    data[field] = value
    with pytest.raises(ValidationError):
        CellData.model_validate(data)


def test_nul_inside_json_is_refused():
    data = CellData.of(cell()).model_dump()
    data["config"] = {"note": "a\x00b"}
    with pytest.raises(ValidationError):
        CellData.model_validate(data)


@pytest.mark.parametrize(("model", "table"), [(CellData, CellRecord),
                                              (MeasurementData, MeasurementRecord)])
def test_an_exchange_model_has_every_column_of_its_table_but_the_store_only_ones(model, table):
    columns = [c.name for c in table.__table__.columns]
    assert STORE_ONLY[table.__tablename__] < set(columns)
    assert list(model.model_fields) == ["kind", *(c for c in columns
                                                  if c not in STORE_ONLY[table.__tablename__])]
    assert model.row is table


def test_a_stricter_field_must_name_an_exchanged_column():
    with pytest.raises(TypeError, match="no exchanged column artifacts, colour"):
        exchange_fields(CellRecord, {"colour": (str, ...), "artifacts": (str, None)})


@pytest.mark.parametrize(("model", "row", "field", "value"), [
    (CellData, cell, "split_manifest", "m" * 33),          # String(32)
    (CellData, cell, "train_seconds", "soon"),             # Float
    (CellData, cell, "started_at", "yesterday"),           # DateTime
    (MeasurementData, measurement, "isolation", "i" * 17),  # String(16)
    (MeasurementData, measurement, "size_bytes", -1),       # Integer: a count
    (MeasurementData, measurement, "error", "nul\x00"),     # Text
    (MeasurementData, measurement, "details", ["not", "a", "dict"])])  # JSON
def test_a_field_typed_from_its_column_refuses_what_the_column_cannot_hold(model, row, field,
                                                                           value):
    data = model.of(row()).model_dump()
    data[field] = value
    with pytest.raises(ValidationError):
        model.model_validate(data)


def test_column_defaults_are_fresh_for_each_record():
    first, second = (MeasurementData.model_validate(
        {k: v for k, v in MeasurementData.of(measurement()).model_dump().items()
         if k not in ("samples_s", "details")}) for _ in range(2))
    assert first.details == {} and first.samples_s == []
    assert first.details is not second.details


def test_a_store_made_before_migrations_is_upgraded(tmp_path, monkeypatch):
    """A database with the first schema and no alembic_version gains devices and hashes."""
    monkeypatch.setenv("MEDQ_DEVICE", "old-box")
    db = tmp_path / "medq.sqlite"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as connection:
        from alembic import command
        from alembic.config import Config
        config = Config()
        config.set_main_option("script_location", str(migrate.MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, migrate.FIRST_REVISION)
    engine.dispose()
    (tmp_path / "artifacts" / "c1").mkdir(parents=True)
    (tmp_path / "artifacts" / "c1" / "model.pt").write_bytes(b"weights")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE alembic_version")
        con.execute(
            "INSERT INTO cells (cell_id, grid, dataset, backbone, method, w_bits, a_bits, seed,"
            " status, split_manifest, metrics, config, provenance, artifacts, started_at,"
            " finished_at) VALUES ('c1', 'g', 'd', 'b', 'fp32', 32, 32, 0, 'ok', 'm', '{}',"
            " '{}', '{}', 'artifacts/c1', '2026-01-01 00:00:00', '2026-01-01 00:01:00')")
        con.execute(
            "INSERT INTO measurements (cell_id, profile, machine, batch_size, status, isolation,"
            " samples_s, fingerprint, profile_config, details, started_at, finished_at) VALUES"
            " ('c1', 'host', 'abc', 1, 'ok', 'process', '[0.001]', '{}', '{}', '{}',"
            " '2026-01-01 00:00:00', '2026-01-01 00:01:00')")

    store = ResultsStore(tmp_path)
    assert migrate.current(store.engine) == migrate.head()
    row = store.get("c1")
    assert row.device == "old-box"
    assert row.artifact_hashes == {"model.pt": file_sha256(tmp_path / "artifacts/c1/model.pt")}
    assert row.record_hash == CellData.of(row).content_hash()
    (m,) = stored(store).measurements
    assert m.device == "old-box"
    assert not migrate.upgrade(store.engine), "a current store needs no migration"


def test_an_out_of_range_time_is_invalid_not_a_crash():
    data = CellData.of(cell()).model_dump()
    data["started_at"] = "0001-01-01T00:00:00+05:00"
    with pytest.raises(ValidationError):
        CellData.model_validate(data)


def test_missing_hashes_are_filled_at_every_open(tmp_path):
    """A fill interrupted after the migration is finished by the next open."""
    store = ResultsStore(tmp_path)
    store.commit(cell())
    with store.engine.begin() as connection:
        connection.execute(CellRecord.__table__.update().values(record_hash=None))
    assert ResultsStore(tmp_path).get("c1").record_hash == CellData.of(cell()).content_hash()


def test_ingest_repairs_a_damaged_file_and_drops_unlisted_ones_after_commit(tmp_path):
    source = ResultsStore(tmp_path / "src")
    with source.staging("c1") as staged:
        (staged / "model.onnx").write_bytes(b"onnx")
        source.commit(cell(), staged)
    target = ResultsStore(tmp_path / "dst")
    files = {"c1": source.artifact_dir("c1")}
    target.ingest(stored(source), files)
    (target.artifact_dir("c1") / "model.onnx").write_bytes(b"damaged")
    (target.artifact_dir("c1") / "stray.bin").write_bytes(b"x")
    target.ingest(stored(source), files)
    assert (target.artifact_dir("c1") / "model.onnx").read_bytes() == b"onnx"

    with source.staging("c1") as staged:
        (staged / "model.onnx").write_bytes(b"onnx, retrained")
        source.commit(cell(finished=T0 + timedelta(hours=1)), staged)
    assert target.ingest(stored(source), files).replaced
    assert sorted(p.name for p in target.artifact_dir("c1").iterdir()) == ["model.onnx"]
    assert (target.artifact_dir("c1") / "model.onnx").read_bytes() == b"onnx, retrained"


def test_a_bad_device_name_stops_a_run_before_it_starts(write_grid, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQ_DEVICE", "no/slashes")
    result = cli("run", "--grid", write_grid(), "--store", tmp_path / "s", "--quiet")
    assert result.exit_code == 2 and "MEDQ_DEVICE" in result.output
    assert not (tmp_path / "s").exists()


def test_a_seed_the_store_cannot_hold_is_refused_by_the_grid(write_grid, cli, tmp_path):
    result = cli("run", "--grid", write_grid(seeds=[-1]), "--store", tmp_path / "s")
    assert result.exit_code == 2 and "seeds" in result.output
