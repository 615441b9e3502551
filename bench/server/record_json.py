"""The JSON of a page of `GET /api/v1/records`, written from the stored columns.

A results server is read far more often than written, and every record on it was validated
when it was stored. So a page is written straight from the columns, with no model built,
validated or dumped per row: the JSON columns are read as the text the database holds
(`CAST(... AS TEXT)`, never parsed) and spliced in; the other columns of the whole page are
encoded by one `json.dumps`, each JSON column there held by a marker (a string of one NUL
character, which no stored string holds: ingest refuses NUL) that the stored text then
replaces.

A row holding a value that validation would change or refuse (a non-finite number, a NUL
character, a JSON column that is empty or null, a timestamp with a time zone, a type no
column of the models has) is written the validated way instead (`CellData.of` /
`MeasurementData.of`, as the API answered before this module), so a page has the same content
either way; only the spacing inside JSON columns may differ.

`samples=False` leaves each measurement's `samples_s` out (the column is not even read): a
client that needs only the latency summaries moves a fraction of the bytes. The items'
`record_hash` stays that of the whole stored record.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from json import JSONEncoder, dumps
from typing import Any

from sqlalchemy import JSON, Row, Select, Text, bindparam, cast, func, inspect, select
from sqlalchemy.orm import Session

from bench.store.records import CellData, MeasurementData
from bench.store.schema import CellRecord, MeasurementRecord

SAMPLES = "samples_s"
Model = type[CellData] | type[MeasurementData]
MARK = "\x00"
MARK_JSON = '"\\u0000"'
"""MARK as json.dumps writes it: what the stored JSON text replaces."""


class _Unclean(Exception):
    """A stored value that validation would change or refuse: write the row validated."""


def _time(value: Any) -> str:
    """json.dumps' `default`: naive datetimes as pydantic writes them, anything else _Unclean."""
    if type(value) is datetime and value.tzinfo is None:
        return value.isoformat()
    raise _Unclean


_encode = JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=_time).encode


@dataclass(frozen=True)
class Layout:
    """How one kind of record is read: its table, its fields in the model's order (and which
    of them are JSON columns), and the statement that reads a page's rows by key."""

    model: Model
    table: Any
    names: tuple[str, ...]
    stored_json: tuple[bool, ...]
    rows_by_key: Select[Any]

    @property
    def key(self) -> Any:
        return inspect(self.table).primary_key[0]

    @functools.cached_property
    def keys(self) -> tuple[str, ...]:
        """The keys of an item: kind, the fields, record_hash."""
        return ("kind", *self.names, "record_hash")

    @functools.cached_property
    def json_positions(self) -> tuple[int, ...]:
        """Where the JSON columns are among an item's keys."""
        return tuple(i + 1 for i, is_json in enumerate(self.stored_json) if is_json)


@functools.cache
def layout(model: Model, samples: bool) -> Layout:
    table = CellRecord if model is CellData else MeasurementRecord
    columns = inspect(table).columns
    names = tuple(name for name in model.model_fields
                  if name != "kind" and (samples or name != SAMPLES))
    stored_json = tuple(isinstance(columns[name].type, JSON) for name in names)
    key = inspect(table).primary_key[0]
    read = [cast(getattr(table, n), Text) if j else getattr(table, n)
            for n, j in zip(names, stored_json, strict=True)]
    statement = select(key, *read, table.record_hash).where(
        key.in_(bindparam("keys", expanding=True)))
    return Layout(model, table, names, stored_json, statement)


def total(session: Session, query: Select[Any], model: Model) -> int:
    """How many records ``query`` selects."""
    keys = query.with_only_columns(layout(model, True).key).order_by(None).subquery()
    return session.connection().execute(select(func.count()).select_from(keys)).scalar_one()


def items_json(session: Session, query: Select[Any], model: Model, limit: int, offset: int,
               samples: bool = True) -> tuple[str, int]:
    """The JSON array of the records of ``query`` (an ORM select of CellRecord or
    MeasurementRecord, ordered) in ``[offset, offset + limit)``, and how many places of the
    order the page covers.

    The page's keys are found first (from an index, without reading the rows skipped), then
    only its rows are read; a row replaced in between by a concurrent upload is left out
    (its replacement has its own place in the order)."""
    shape = layout(model, samples)
    connection = session.connection()
    keys = connection.execute(query.with_only_columns(shape.key).limit(limit).offset(offset)) \
        .scalars().all()
    if not keys:
        return "[]", 0
    by_key = {row[0]: row for row in connection.execute(shape.rows_by_key, {"keys": keys})}
    rows = [by_key[k] for k in keys if k in by_key]
    try:
        return _rows_json(shape, rows), len(keys)
    except _Unclean:
        items = [_row_or_validated(session, shape, row) for row in rows]
        return f"[{','.join(i for i in items if i is not None)}]", len(keys)


def _row_or_validated(session: Session, shape: Layout, row: Row[Any]) -> str | None:
    """One row's object: from its columns if it is clean, else validated (None: gone)."""
    try:
        return _rows_json(shape, [row])[1:-1]
    except _Unclean:
        return validated_json(session, shape, row[0])


def _rows_json(shape: Layout, rows: Sequence[Row[Any]]) -> str:
    """The JSON array of the rows' objects, encoded by one json.dumps; _Unclean if a row is."""
    kind = shape.model.model_fields["kind"].default
    objects, stored = [], []
    for row in rows:
        values = [kind, *row[1:]]
        for i in shape.json_positions:
            stored.append(_stored_json(values[i]))
            values[i] = MARK
        objects.append(dict(zip(shape.keys, values, strict=True)))
    try:
        text = _encode(objects)
    except ValueError:   # NaN or infinity
        raise _Unclean from None
    pieces = text.split(MARK_JSON)
    if len(pieces) != len(stored) + 1 or text.count("\\u0000") != len(stored):
        raise _Unclean   # a NUL character in some string
    out = [pieces[0]]
    for piece, raw in zip(pieces[1:], stored, strict=True):
        out.append(raw)
        out.append(piece)
    return "".join(out)


def _stored_json(text: str | None) -> str:
    if (text is None or text == "null" or "NaN" in text or "Infinity" in text
            or "\\u0000" in text):
        raise _Unclean
    return text


def validated_item(model: Model, row: CellRecord | MeasurementRecord) -> dict[str, Any]:
    """A record as the API lists it, through its model: validated and dumped."""
    return {**model.of(row).model_dump(mode="json"),  # type: ignore[arg-type]
            "record_hash": row.record_hash}


def validated_json(session: Session, shape: Layout, key: Any) -> str | None:
    """The row's object, validated; None if it is no longer stored."""
    row = session.get(shape.table, key)
    if row is None:
        return None
    item = validated_item(shape.model, row)
    if SAMPLES not in shape.names:
        item.pop(SAMPLES, None)
    return dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def page_json(items: str, covered: int, total: int, limit: int, offset: int) -> bytes:
    """The page object `{"items": [...], "total", "limit", "offset", "next_offset"}` around
    the JSON array of its items, which cover ``covered`` places from ``offset``."""
    end = offset + covered
    tail = dumps({"total": total, "limit": limit, "offset": offset,
                  "next_offset": end if end < total else None}, separators=(",", ":"))
    return f'{{"items":{items},{tail[1:]}'.encode()
