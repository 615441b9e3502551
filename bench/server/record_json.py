"""The JSON of a page of `GET /api/v1/records`, written from the stored columns and kept.

A results server is read far more often than written, and every record on it was validated
when it was stored. So an item is written straight from its row, with no model built,
validated or dumped: the JSON columns are read as the text the database holds (`CAST(... AS
TEXT)`, never parsed) and spliced in; the other columns are encoded by `json.dumps`, each JSON
column held there by a marker (a string of one NUL character, which no stored string holds:
ingest refuses NUL) that the stored text then replaces.

A row holding a value that validation would change or refuse (a non-finite number, a NUL
character, a JSON column that is empty or null, a timestamp with a time zone, a type no
column of the models has) is written the validated way instead (`CellData.of` /
`MeasurementData.of`, as the API answered before this module), so an item has the same content
either way; only the spacing inside JSON columns may differ.

Items are kept (ITEMS, least recently used out beyond CACHE_BYTES) by their record's
`record_hash`: every store write sets it to the SHA-256 of the record's whole content, so a
kept item can never be stale, and a page of kept items reads only its keys and hashes.

`samples=False` leaves each measurement's `samples_s` out (the column is not even read): a
client that needs only the latency summaries moves a fraction of the bytes. The items'
`record_hash` stays that of the whole stored record.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
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
CACHE_BYTES = 64 * 2**20
PAGE_BYTES = 32 * 2**20
"""A page's items stop once they pass this many characters; `next_offset` says where to go on."""
ROWS_AT_ONCE = 50


class _Unclean(Exception):
    """A stored value that validation would change or refuse: write the row validated."""


def _time(value: Any) -> str:
    """json.dumps' `default`: naive datetimes as pydantic writes them, anything else _Unclean."""
    if type(value) is datetime and value.tzinfo is None:
        return value.isoformat()
    raise _Unclean


_encode = JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=_time).encode


class ItemCache:
    """Items' JSON by (kind, samples, record_hash), the least recently used dropped beyond
    ``limit`` characters; safe across threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[Hashable, str] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, str]:
        with self._lock:
            found = {}
            for key in keys:
                text = self._items.get(key)
                if text is not None:
                    self._items.move_to_end(key)
                    found[key] = text
            return found

    def put(self, key: Hashable, text: str) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = text
            self._size += len(text)
            while self._size > self.limit and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def __len__(self) -> int:
        return len(self._items)


ITEMS = ItemCache(CACHE_BYTES)


@dataclass(frozen=True)
class Layout:
    """How one kind of record is read: its table, its fields in the model's order (and which
    of them are JSON columns), and the statement that reads rows by key."""

    model: Model
    table: Any
    kind: str
    samples: bool
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
    kind = str(model.model_fields["kind"].default)
    return Layout(model, table, kind, samples, names, stored_json, statement)


def total(session: Session, query: Select[Any], model: Model) -> int:
    """How many records ``query`` selects."""
    keys = query.with_only_columns(layout(model, True).key).order_by(None).subquery()
    return session.connection().execute(select(func.count()).select_from(keys)).scalar_one()


def items_json(session: Session, query: Select[Any], model: Model, limit: int, offset: int,
               samples: bool = True, cache: ItemCache = ITEMS,
               page_bytes: int | None = None) -> tuple[str, int]:
    """The JSON array of the records of ``query`` (an ORM select of CellRecord or
    MeasurementRecord, ordered) in ``[offset, offset + limit)``, and how many places of the
    order the page covers: fewer than ``limit`` once the items pass ``page_bytes`` (default
    PAGE_BYTES; at least one item each page), so a page stays bounded whatever its records
    hold. Rows are read ROWS_AT_ONCE at a time.

    The page's keys and hashes are read first (without the rows skipped); only the rows whose
    items are not kept are read in full. A row replaced in between by a concurrent upload is
    left out (its replacement has its own place in the order)."""
    shape = layout(model, samples)
    page_bytes = PAGE_BYTES if page_bytes is None else page_bytes
    connection = session.connection()
    page = connection.execute(query.with_only_columns(shape.key, shape.table.record_hash)
                              .limit(limit).offset(offset)).all()
    tag = (shape.kind, shape.samples)
    kept = cache.get_many((*tag, h) for _, h in page if h is not None)
    items: list[str] = []
    covered = size = 0
    for start in range(0, len(page), ROWS_AT_ONCE):
        part = page[start:start + ROWS_AT_ONCE]
        wanted = [k for k, h in part if (*tag, h) not in kept]
        fresh = {}
        if wanted:
            for row in connection.execute(shape.rows_by_key, {"keys": wanted}):
                text = _row_or_validated(session, shape, row)
                if text is not None:
                    fresh[row[0]] = text
                    if row[-1] is not None:
                        cache.put((*tag, row[-1]), text)
        for k, h in part:
            text = fresh.get(k) or kept.get((*tag, h))
            if text is not None:
                if items and size + len(text) > page_bytes:
                    return f"[{','.join(items)}]", covered
                items.append(text)
                size += len(text) + 1
            covered += 1
    return f"[{','.join(items)}]", covered


def _row_or_validated(session: Session, shape: Layout, row: Row[Any]) -> str | None:
    """One row's object: from its columns if it is clean, else validated (None: gone)."""
    try:
        return _row_json(shape, row)
    except _Unclean:
        return validated_json(session, shape, row[0])


def _row_json(shape: Layout, row: Row[Any]) -> str:
    """The row's object from its columns; _Unclean if validation would change it."""
    values = [shape.kind, *row[1:]]
    stored = []
    for i in shape.json_positions:
        stored.append(_stored_json(values[i]))
        values[i] = MARK
    try:
        text = _encode(dict(zip(shape.keys, values, strict=True)))
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
    if not shape.samples:
        item.pop(SAMPLES, None)
    return dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def page_json(items: str, covered: int, total: int, limit: int, offset: int) -> bytes:
    """The page object `{"items": [...], "total", "limit", "offset", "next_offset"}` around
    the JSON array of its items, which cover ``covered`` places from ``offset``."""
    end = offset + covered
    tail = dumps({"total": total, "limit": limit, "offset": offset,
                  "next_offset": end if end < total else None}, separators=(",", ":"))
    return f'{{"items":{items},{tail[1:]}'.encode()
