"""GET /api/v1/records writes its pages from the stored columns: the same content as the
validated records it answered with before (`validated_item`), on SQLite and PostgreSQL; rows
that validation would change take the validated way; `samples=false` leaves samples out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event, select, update
from sqlalchemy.orm import Session

from bench.server import record_json
from bench.server.app import create_app
from bench.server.record_json import validated_item
from bench.server.settings import ServerSettings
from bench.store import CellRecord, ResultsStore
from bench.store.records import CellData, MeasurementData
from bench.store.schema import MeasurementRecord
from tests.server_helpers import T0, batch, cell, measurement


@dataclass
class Reads:
    client: TestClient
    store: ResultsStore

    def page(self, **params: Any) -> dict[str, Any]:
        response = self.client.get("/api/v1/records", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def validated(self, model: type[CellData] | type[MeasurementData]) -> list[dict[str, Any]]:
        """Every stored record as the API answered before: through its model, in API order."""
        table = CellRecord if model is CellData else MeasurementRecord
        order = CellRecord.cell_id if model is CellData else MeasurementRecord.id
        with Session(self.store.engine) as session:
            return [validated_item(model, row)
                    for row in session.scalars(select(table).order_by(order))]


def _with(record: Any, **changes: Any) -> Any:
    """The record with some fields changed, validated again."""
    return type(record).model_validate({**record.model_dump(), **changes})


def _records() -> Any:
    """Cells and measurements with the values a JSON writer can get wrong: non-ASCII and
    escapes in strings and JSON keys, nested JSON, floats that need all 17 digits, tiny and
    huge floats, None fields, timestamps with and without microseconds."""
    odd = {"µ-weights": "Ω \"quoted\" \\ back\tslash\n", "nested": {"list": [1, 2.5, None,
           True, {"k": []}]}, "float": 0.1 + 0.2, "tiny": 1e-300, "big": 1.5e300, "int": 7}
    cells = [_with(cell("fp", method="fp32"), config=odd, metrics={"deploy": {"size": 12}}),
             _with(cell("q4", method="qat", bits=4, parent_id="fp"),
                   provenance={"é": ["ü", 1]}, artifact_hashes={"model.onnx": "a" * 64}),
             _with(cell("bad", method="pact", bits=4, status="failed",
                        error="diverged: ∞ loss"), accuracy=None, macro_f1=None,
                   train_seconds=None),
             _with(cell("late"), started_at=T0 + timedelta(microseconds=5),
                   finished_at=T0 + timedelta(seconds=1, microseconds=400000))]
    measurements = [measurement(c.cell_id, profile=p, latency=0.1 + 0.2 + i)
                    for i, c in enumerate(cells[:2]) for p in ("host", "pi4")]
    measurements[0] = _with(measurements[0], samples_s=[1e-6 * (i + 1) / 3 for i in range(50)],
                            details=odd, latency_ms_std=None, size_bytes=2**31 - 1)
    return batch(cells, measurements)


@pytest.fixture
def validated_rows(monkeypatch) -> list[Any]:
    """The keys of the rows the API wrote the validated way."""
    keys: list[Any] = []
    original = record_json.validated_json

    def counted(session: Session, shape: record_json.Layout, key: Any) -> str:
        keys.append(key)
        return original(session, shape, key)

    monkeypatch.setattr(record_json, "validated_json", counted)
    return keys


@pytest.fixture
def reads(tmp_path, db_url) -> Iterator[Reads]:
    # the tests below change rows in place, outside the store's writes, keeping their hashes
    record_json.ITEMS.clear()
    app = create_app(ServerSettings.of(db_url, tmp_path / "server"))
    app.state.store.ingest(_records())
    with TestClient(app) as client:
        yield Reads(client, app.state.store)


@pytest.mark.parametrize(("kind", "model"), [("cell", CellData),
                                             ("measurement", MeasurementData)])
def test_default_pages_hold_the_validated_records(reads, validated_rows, kind, model):
    expected = reads.validated(model)
    assert len(expected) >= 4
    page = reads.page(kind=kind)
    assert page["items"] == expected
    assert (page["total"], page["limit"], page["offset"], page["next_offset"]) == \
        (len(expected), 100, 0, None)
    assert [list(item) for item in page["items"]] == [list(item) for item in expected]
    walked = [item for offset in range(0, len(expected), 3)
              for item in reads.page(kind=kind, limit=3, offset=offset)["items"]]
    assert walked == expected
    assert reads.page(kind=kind, limit=3)["next_offset"] == 3
    assert reads.page(kind=kind, offset=len(expected)) == {
        "items": [], "total": len(expected), "limit": 100, "offset": len(expected),
        "next_offset": None}
    assert validated_rows == []   # every row was written from its columns


def test_samples_false_leaves_only_the_samples_out(reads, validated_rows):
    full = reads.page(kind="measurement")
    assert reads.page(kind="measurement", samples="true") == full
    assert len(full["items"][0]["samples_s"]) == 50
    lean = reads.page(kind="measurement", samples="false")
    assert lean["items"] == [{k: v for k, v in item.items() if k != "samples_s"}
                             for item in full["items"]]
    assert lean["total"] == full["total"]
    assert reads.page(kind="cell", samples="false") == reads.page(kind="cell")
    assert reads.client.get("/api/v1/records", params={"samples": "maybe"}).status_code == 422
    assert validated_rows == []


def test_rows_that_validation_changes_are_served_validated(reads, validated_rows):
    """A stored NaN is null, an empty (null) JSON column its default, as before; the other
    rows of the page are still written from their columns."""
    with Session(reads.store.engine) as session, session.begin():
        session.execute(update(MeasurementRecord).where(MeasurementRecord.profile == "pi4")
                        .values(latency_ms_p50=float("nan"), details=None))
        session.execute(update(CellRecord).where(CellRecord.cell_id == "late")
                        .values(metrics=None, accuracy=float("inf")))
    measurements = reads.page(kind="measurement")["items"]
    assert measurements == reads.validated(MeasurementData)
    pi4 = [m for m in measurements if m["profile"] == "pi4"]
    assert len(validated_rows) == len(pi4) == 2
    assert pi4 and all(m["latency_ms_p50"] is None and m["details"] == {} for m in pi4)
    assert [m for m in reads.page(kind="measurement", samples="false")["items"]] == \
        [{k: v for k, v in m.items() if k != "samples_s"} for m in measurements]
    validated_rows.clear()
    cells = reads.page(kind="cell")["items"]
    assert cells == reads.validated(CellData)
    assert validated_rows == ["late"]
    late = next(c for c in cells if c["cell_id"] == "late")
    assert late["metrics"] == {} and late["accuracy"] is None


def test_a_row_replaced_while_a_page_is_read_is_left_out(reads, monkeypatch):
    """An upload replacing a measurement between the page's two reads (keys, then rows; each
    sees the latest commit, on both backends): the page answers without the old row, with
    `next_offset` past its keys."""
    stored = reads.validated(MeasurementData)
    victim = stored[1]
    real_connection = Session.connection
    reads_done = [0]

    class Racing:
        def __init__(self, connection: Any) -> None:
            self._connection = connection

        def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
            reads_done[0] += 1
            if reads_done[0] == 3:   # total, keys, then (here) the rows by key
                with Session(reads.store.engine) as other, other.begin():
                    other.execute(delete(MeasurementRecord).where(
                        MeasurementRecord.cell_id == victim["cell_id"],
                        MeasurementRecord.profile == victim["profile"]))
            return self._connection.execute(statement, *args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._connection, name)

    monkeypatch.setattr(Session, "connection",
                        lambda self, *a, **k: Racing(real_connection(self, *a, **k)))
    page = reads.page(kind="measurement", limit=3)
    hashes = [item["record_hash"] for item in page["items"]]
    assert len(hashes) == len(set(hashes)) and page["next_offset"] == 3
    assert all(item in stored for item in page["items"])
    assert len(page["items"]) == 2 and victim not in page["items"]


def test_kept_items_are_served_without_reading_their_rows_until_a_record_changes(reads):
    full_reads: list[Any] = []
    first = reads.page(kind="measurement")
    assert len(record_json.ITEMS) == len(first["items"])
    engine = reads.store.engine

    def count_full_reads(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "CAST(" in statement:
            full_reads.append(statement)

    event.listen(engine, "before_cursor_execute", count_full_reads)
    try:
        assert reads.page(kind="measurement") == first
        assert full_reads == []
        newer = _with(measurement("fp", profile="host", latency=9.0, minutes=5))
        reads.store.ingest(batch(measurements=[newer]))   # replaces ("fp", host): a new hash
        again = reads.page(kind="measurement")["items"]
    finally:
        event.remove(engine, "before_cursor_execute", count_full_reads)
    assert len(full_reads) == 1   # only the replaced record's row
    assert again == reads.validated(MeasurementData)
    assert next(m for m in again if m["cell_id"] == "fp" and m["profile"] == "host")[
        "latency_ms_p50"] == 9.0


def test_the_item_cache_drops_the_least_recently_used_beyond_its_limit():
    cache = record_json.ItemCache(limit=10)
    cache.put("a", "1234")
    cache.put("b", "1234")
    assert cache.get_many(["a"]) == {"a": "1234"}   # a is now the most recently used
    cache.put("c", "1234")                          # 12 > 10: b goes
    assert cache.get_many(["a", "b", "c"]) == {"a": "1234", "c": "1234"}
    cache.put("big", "x" * 11)                      # larger than the limit: not kept at all
    assert len(cache) == 0
