"""Records as data: the validated, hashable form in which cells and measurements leave a store.

A bundle, an upload and the server's API all carry these models. CellData and MeasurementData
are made from the columns of their tables (bench.store.schema), one field per column but the
STORE_ONLY ones, each typed by its column unless a stricter type is given: a column added to a
table is exchanged without a second list to keep in step. Each record has a content
hash (SHA-256 of its canonical JSON), so moving the same record twice stores it once, and a
store can say which records it already has. `ingest` writes a batch into a store's database in
one transaction with one rule for conflicts: a record replaces the stored one with the same key
only if it is better (ok beats failed, then the later `finished_at` wins). So that rule cannot be
won with a clock, a record finished (or started) in the future, beyond MAX_CLOCK_SKEW, is
refused; every replacement is kept in the `record_replacements` audit table, and every record
received the `record_origins` row of where it came from and who signed it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import sqlalchemy as sa
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    create_model,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.store.accuracy import check_accuracy_details
from bench.store.bounds import (
    FINITE_FIELDS,
    MAX_ARTIFACT_FILES,
    MAX_SAMPLES,
    bounded_json,
    bounded_text,
    require_finite,
)
from bench.store.identity import DEVICE_PATTERN
from bench.store.schema import (
    Base,
    CellRecord,
    MeasurementRecord,
    RecordOrigin,
    RecordReplacement,
)

HASH_PATTERN = r"^[0-9a-f]{64}$"
INT32 = 2**31 - 1
MeasurementKey = tuple[str, str, str, str, int]
"""(cell_id, profile, device, machine, batch_size): one measurement per key in a store."""
MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a record's times may lie (clocks of devices differ a little)."""
STORE_ONLY = {"cells": frozenset({"artifacts", "record_hash"}),
              "measurements": frozenset({"id", "record_hash"})}
"""The columns of a table that never leave a store: the local artifact path and row id, and the
content hash (recomputed from the record wherever it arrives). Every other column is a field."""


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


def clean_json(value: Any) -> Any:
    """JSON with NaN/inf as null and no NUL characters (PostgreSQL stores neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _no_nul(value)
    if isinstance(value, dict):
        return {_no_nul(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def _relative_path(value: str) -> str:
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("'.' and '..' are not allowed in an artifact path")
    return value


def _utc_naive(value: datetime) -> datetime:
    """Naive UTC, as SQLite and PostgreSQL's `timestamp` hand it back."""
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError as err:
            raise ValueError("the time is out of range in UTC") from err
    return value


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


Text = Annotated[str, AfterValidator(bounded_text), AfterValidator(_no_nul)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_no_nul)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z_-]+$")]
Device = Annotated[str, StringConstraints(pattern=DEVICE_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=HASH_PATTERN)]
Json = Annotated[dict[str, Any], AfterValidator(bounded_json), AfterValidator(clean_json)]
Time = Annotated[datetime, AfterValidator(_utc_naive)]
Real = Annotated[float | None, AfterValidator(_finite)]
RECEIVED = {"received": True}
"""The validation context of records arriving from elsewhere (an upload, a bundle's lines):
a measurement's NaN or infinite figure is refused there, where a stored one reads as null."""


def _finite_figure(value: float | None, info: ValidationInfo) -> float | None:
    if value is None or math.isfinite(value):
        return value
    if info.context and info.context.get("received"):
        return require_finite(value)
    return None


Finite = Annotated[float | None, AfterValidator(_finite_figure)]
"""A measurement's figure: a finite number or absent (see RECEIVED)."""
Bits = Annotated[int, Field(ge=1, le=32)]
Count = Annotated[int, Field(ge=0, le=INT32)]


def _column_field(column: sa.Column[Any]) -> tuple[Any, Any]:
    """A field's (type, default) as its column implies: a string of at most the column's length
    (MAX_TEXT_CHARS for Text) without NUL, an integer 0..INT32, a finite float (else None),
    cleaned JSON of at most MAX_JSON_BYTES, a naive UTC time (bounds: bench.store.bounds);
    None by default where the column is nullable, and a fresh copy of the column's default
    where it has one (its callable ignores the context it is given)."""
    kind = column.type
    if isinstance(kind, sa.String):
        kind_of: Any = Text if kind.length is None else Annotated[
            str, StringConstraints(max_length=kind.length), AfterValidator(_no_nul)]
    elif isinstance(kind, sa.Integer):
        kind_of = Count
    elif isinstance(kind, sa.Float):
        kind_of = Real
    elif isinstance(kind, sa.JSON):
        kind_of = Json
    elif isinstance(kind, sa.DateTime):
        kind_of = Time
    else:
        raise TypeError(f"column {column.name}: no exchange type for {kind!r}")
    if column.default is not None:
        return kind_of, Field(default_factory=partial(column.default.arg, None))
    if column.nullable:
        return (kind_of if kind_of is Real else kind_of | None), None
    return kind_of, ...


def exchange_fields(table: type[Base], stricter: dict[str, tuple[Any, Any]]
                    ) -> dict[str, tuple[Any, Any]]:
    """The fields of ``table``'s exchange model: one per column but the STORE_ONLY ones, in the
    table's order, typed by `_column_field` unless ``stricter`` gives the field's (type,
    default) instead (an id's pattern, a non-empty name, an allowed status)."""
    columns = [c for c in table.__table__.columns if c.name not in STORE_ONLY[table.__tablename__]]
    unknown = set(stricter) - {c.name for c in columns}
    if unknown:
        raise TypeError(f"{table.__name__} has no exchanged column {', '.join(sorted(unknown))}")
    return {c.name: stricter.get(c.name) or _column_field(c) for c in columns}


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    row: ClassVar[type[Base]]
    """The table row this is the exchange form of."""

    @classmethod
    def of(cls, row: Any) -> Any:
        """The exchange form of a stored row, validated; empty JSON columns of an unsaved row
        take their defaults."""
        values = {name: getattr(row, name) for name in cls.model_fields if name != "kind"}
        return cls.model_validate({k: v for k, v in values.items()
                                   if v is not None or cls.model_fields[k].is_required()
                                   or cls.model_fields[k].default is None})

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Any:
        """Validate a record as the server's API lists it (with its `record_hash`)."""
        return cls.model_validate({k: v for k, v in item.items() if k != "record_hash"})

    def to_row(self, digest: str | None = None) -> Any:
        """A row of the table, with ``digest`` (default: this record's content hash)."""
        return self.row(**self.model_dump(exclude={"kind"}),
                        record_hash=digest or self.content_hash())

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of this record."""
        body = self.model_dump(mode="json")
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


class _Cell(_Record):
    row = CellRecord


class _Measurement(_Record):
    row = MeasurementRecord

    @model_validator(mode="after")
    def _accuracy_bounds(self) -> _Measurement:
        check_accuracy_details(self.details or {})
        return self

    def key(self) -> MeasurementKey:
        return (self.cell_id, self.profile, self.device, self.machine, self.batch_size)


CellData = create_model(
    "CellData", __base__=_Cell, __module__=__name__,
    __doc__="A grid cell's record: the columns of `cells` (CellRecord) but STORE_ONLY's.",
    kind=(Literal["cell"], "cell"),
    **exchange_fields(CellRecord, {
        "cell_id": (Id, ...),
        "parent_id": (Id | None, None),
        "device": (Device, ...),
        "grid": (Annotated[str, StringConstraints(min_length=1, max_length=128),
                           AfterValidator(_no_nul)], ...),
        "dataset": (Name, ...),
        "backbone": (Name, ...),
        "method": (Name, ...),
        "w_bits": (Bits, ...),
        "a_bits": (Bits, ...),
        "status": (Literal["ok", "failed"], ...),
        "artifact_hashes": (dict[Annotated[str, StringConstraints(
            min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"),
            AfterValidator(_relative_path)], Sha256],
            Field(default_factory=dict, max_length=MAX_ARTIFACT_FILES)),
    }))
MeasurementData = create_model(
    "MeasurementData", __base__=_Measurement, __module__=__name__,
    __doc__="One measurement of a deployed cell: the columns of `measurements` "
            "(MeasurementRecord) but STORE_ONLY's.",
    kind=(Literal["measurement"], "measurement"),
    **exchange_fields(MeasurementRecord, {
        "cell_id": (Id, ...),
        "device": (Device, ...),
        "profile": (Annotated[str, StringConstraints(min_length=1, max_length=128),
                              AfterValidator(_no_nul)], ...),
        "machine": (Annotated[str, StringConstraints(min_length=1, max_length=16,
                                                     pattern=r"^[0-9A-Za-z]+$")], ...),
        "batch_size": (Annotated[int, Field(ge=1, le=INT32)], ...),
        "status": (Literal["ok", "failed"], ...),
        "samples_s": (list[Annotated[float, Field(ge=0, allow_inf_nan=False)]],
                      Field(default_factory=list, max_length=MAX_SAMPLES)),
        **{name: (Finite, None) for name in FINITE_FIELDS
           if isinstance(MeasurementRecord.__table__.columns[name].type, sa.Float)},
    }))


class RecordBatch(BaseModel):
    """Cells and measurements moved together (a bundle's records, an upload's body)."""

    model_config = ConfigDict(extra="forbid")

    cells: list[CellData] = Field(default_factory=list)
    measurements: list[MeasurementData] = Field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cells) + len(self.measurements)

    def devices(self) -> set[str]:
        return {r.device for r in (*self.cells, *self.measurements)}


class FutureRecordError(ValueError):
    """A record's `started_at` or `finished_at` lies in the future beyond MAX_CLOCK_SKEW."""


def utc_now() -> datetime:
    """Naive UTC, as the store keeps times."""
    return datetime.now(UTC).replace(tzinfo=None)


def check_times(batch: RecordBatch, now: datetime | None = None) -> None:
    """FutureRecordError naming the first record whose times lie after ``now`` (default: the
    current time) by more than MAX_CLOCK_SKEW."""
    limit = (now or utc_now()) + MAX_CLOCK_SKEW
    for record in (*batch.cells, *batch.measurements):
        for name in ("started_at", "finished_at"):
            value = getattr(record, name)
            if value > limit:
                what = (f"cell {record.cell_id}" if isinstance(record, CellData) else
                        f"measurement of cell {record.cell_id} on {record.device} under "
                        f"{record.profile}")
                raise FutureRecordError(
                    f"{what}: {name} {value:%Y-%m-%d %H:%M:%S} UTC is in the future (now "
                    f"{limit - MAX_CLOCK_SKEW:%Y-%m-%d %H:%M:%S} UTC, allowed skew "
                    f"{MAX_CLOCK_SKEW.seconds // 60} min); check the device's clock")


@dataclass(frozen=True)
class Origin:
    """Where records come from into a store: ``source`` in words (a bundle's SHA-256, an
    upload's id) and its signature: the signing key's fingerprint, the signer's name from a
    trusted key, and whether the signature was verified against a trusted key."""

    source: str
    signer_key: str | None = None
    signer: str | None = None
    verified: bool = False


def record_key(record: CellData | MeasurementData | CellRecord | MeasurementRecord) -> str:
    """The record's key in words, for the audit table."""
    if isinstance(record, CellData | CellRecord):
        return record.cell_id
    return "/".join(str(part) for part in (record.cell_id, record.profile, record.device,
                                           record.machine, record.batch_size))


def audit_replacement(session: Session, old: CellRecord | MeasurementRecord,
                      new: CellData | MeasurementData | CellRecord | MeasurementRecord,
                      new_hash: str, source: str) -> None:
    """Keep ``old`` (being replaced by ``new``) in the audit table."""
    session.add(RecordReplacement(
        kind="cell" if isinstance(old, CellRecord) else "measurement", cell_id=old.cell_id,
        record_key=record_key(old)[:400], old_hash=old.record_hash, new_hash=new_hash,
        old_status=old.status, new_status=new.status,
        old_finished_at=_utc_naive(old.finished_at), new_finished_at=_utc_naive(new.finished_at),
        replaced_at=utc_now(), source=source[:200]))


def _note_origin(session: Session, origins: dict[str, RecordOrigin], digest: str,
                 record: CellData | MeasurementData, origin: Origin) -> None:
    """Record where ``record`` came from, unless its origin is known; a verified signature
    upgrades a known origin that had none. (A record made in this store and received again
    unchanged keeps having no origin row: it is this store's own.)"""
    known = origins.get(digest)
    if known is None:
        known = RecordOrigin(record_hash=digest, kind=record.kind, device=record.device,
                             source=origin.source[:200], signer_key=origin.signer_key,
                             signer=origin.signer, verified=origin.verified,
                             received_at=utc_now())
        session.add(known)
        origins[digest] = known
    elif origin.verified and not known.verified:
        known.source, known.signer_key = origin.source[:200], origin.signer_key
        known.signer, known.verified = origin.signer, True


def _stored_origins(session: Session, hashes: list[str]) -> dict[str, RecordOrigin]:
    found: dict[str, RecordOrigin] = {}
    for chunk in _chunks(list(dict.fromkeys(hashes))):
        found.update((row.record_hash, row) for row in session.scalars(
            select(RecordOrigin).where(RecordOrigin.record_hash.in_(chunk))))
    return found


@dataclass
class IngestResult:
    """What `ingest` did with each record, by content hash."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    def as_counts(self) -> dict[str, int]:
        return {"added": len(self.added), "replaced": len(self.replaced),
                "unchanged": len(self.unchanged), "stale": len(self.stale)}


def _better(new: CellData | MeasurementData, old: CellRecord | MeasurementRecord) -> bool:
    """ok beats failed; between equals, the later finished_at wins."""
    rank_new = (new.status == "ok", new.finished_at)
    rank_old = (old.status == "ok", _utc_naive(old.finished_at))
    return rank_new > rank_old


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _stored_cells(session: Session, cell_ids: list[str]) -> dict[str, CellRecord]:
    stored: dict[str, CellRecord] = {}
    for chunk in _chunks(cell_ids):
        stored.update((row.cell_id, row) for row in session.scalars(
            select(CellRecord).where(CellRecord.cell_id.in_(chunk))))
    return stored


def _stored_measurements(session: Session, keys: set[MeasurementKey]
                         ) -> dict[MeasurementKey, MeasurementRecord]:
    stored: dict[MeasurementKey, MeasurementRecord] = {}
    for chunk in _chunks(sorted({key[0] for key in keys})):
        for row in session.scalars(select(MeasurementRecord).where(
                MeasurementRecord.cell_id.in_(chunk))):
            key = (row.cell_id, row.profile, row.device, row.machine, row.batch_size)
            if key in keys:
                stored[key] = row
    return stored


def ingest(session: Session, batch: RecordBatch, origin: Origin | None = None,
           now: datetime | None = None) -> IngestResult:
    """Write ``batch`` into ``session`` (the caller commits): new records are added, a
    record whose key is stored replaces it only if better (the replaced one is kept in the
    audit table); identical ones change nothing. FutureRecordError, before anything is
    written, if a record's times lie in the future. Records added or replaced get an
    ``origin`` row (default: unsigned, from an unnamed source). Stored records are looked up
    once per batch, not once per record."""
    check_times(batch, now)
    origin = origin or Origin("unnamed source")
    result = IngestResult()
    received: list[tuple[str, CellData | MeasurementData, bool]] = []
    cells = _unique(batch.cells)
    stored_cells = _stored_cells(session, [c.cell_id for c in cells])
    for cell in cells:
        digest = cell.content_hash()
        old = stored_cells.get(cell.cell_id)
        if old is None:
            session.add(cell.to_row(digest))
            result.added.append(digest)
        elif old.record_hash == digest:
            result.unchanged.append(digest)
            received.append((digest, cell, False))
            continue
        elif _better(cell, old):
            audit_replacement(session, old, cell, digest, origin.source)
            artifacts = old.artifacts
            session.delete(old)
            session.flush()
            row = cell.to_row(digest)
            row.artifacts = artifacts if row.artifact_hashes == old.artifact_hashes else None
            session.add(row)
            result.replaced.append(digest)
        else:
            result.stale.append(digest)
            continue
        received.append((digest, cell, True))
    measurements = _unique(batch.measurements)
    stored = _stored_measurements(session, {m.key() for m in measurements})
    for measurement in measurements:
        digest = measurement.content_hash()
        old_measurement = stored.get(measurement.key())
        if old_measurement is None:
            session.add(measurement.to_row(digest))
            result.added.append(digest)
        elif old_measurement.record_hash == digest:
            result.unchanged.append(digest)
            received.append((digest, measurement, False))
            continue
        elif _better(measurement, old_measurement):
            audit_replacement(session, old_measurement, measurement, digest, origin.source)
            session.delete(old_measurement)
            session.flush()
            session.add(measurement.to_row(digest))
            result.replaced.append(digest)
        else:
            result.stale.append(digest)
            continue
        received.append((digest, measurement, True))
    origins = _stored_origins(session, [digest for digest, _, _ in received])
    for digest, record, written in received:
        if written or digest in origins:
            _note_origin(session, origins, digest, record, origin)
    session.flush()
    return result


R = TypeVar("R", CellData, MeasurementData)


def _unique(records: Iterable[R]) -> list[R]:
    """One record per key: the best of duplicates within a batch."""
    best: dict[Any, R] = {}
    for record in records:
        key = record.cell_id if isinstance(record, CellData) else record.key()
        held = best.get(key)
        if held is None or (record.status == "ok", record.finished_at) > (
                held.status == "ok", held.finished_at):
            best[key] = record
    return list(best.values())


def known_hashes(session: Session, hashes: Iterable[str]) -> set[str]:
    """Which of ``hashes`` the database holds (cells or measurements)."""
    wanted = list(dict.fromkeys(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        for table in (CellRecord, MeasurementRecord):
            found.update(session.scalars(select(table.record_hash)
                                         .where(table.record_hash.in_(chunk))))
    return found

