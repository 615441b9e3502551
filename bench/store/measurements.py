"""The `measurements` table: latency and memory of a cell's deployed model under a profile.

One row per (cell, profile, device, machine fingerprint hash, batch size). A failed measurement is
stored with its error and no latency; measuring the same key again replaces the row, in one
transaction, so a row is never half written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from bench.store.accuracy import ACCURACY_COLUMNS, accuracy_columns
from bench.store.deploy import DEPLOY_COLUMNS
from bench.store.evaluation import EVALUATION_COLUMNS
from bench.store.identity import local_device
from bench.store.records import MeasurementData, audit_replacement
from bench.store.schema import MeasurementRecord

MEASUREMENT_COLUMNS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "peak_rss_mb",
                       "latency_batch_size", "profile", "device", "machine")
"""Result columns taken from a cell's chosen measurement (None when it has none)."""
_RECORD_FIELDS = {"latency_batch_size": "batch_size"}


def save_measurement(engine: Engine, record: MeasurementRecord) -> None:
    """Store ``record`` (with its device and content hash), replacing any row with the same
    key (kept in the audit table), in one transaction."""
    record.device = record.device or local_device()
    record.record_hash = MeasurementData.of(record).content_hash()
    same_key = (MeasurementRecord.cell_id == record.cell_id,
                MeasurementRecord.profile == record.profile,
                MeasurementRecord.device == record.device,
                MeasurementRecord.machine == record.machine,
                MeasurementRecord.batch_size == record.batch_size)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        old = session.scalars(select(MeasurementRecord).where(*same_key)).first()
        if old is not None and old.record_hash != record.record_hash:
            audit_replacement(session, old, record, record.record_hash, "bench measure")
        session.execute(delete(MeasurementRecord).where(*same_key))
        session.add(record)


def measured_cells(engine: Engine, profile: str, device: str, machine: str,
                   batch_size: int) -> set[str]:
    """Cells with a successful measurement under this profile, device, machine and batch size."""
    with Session(engine) as session:
        return set(session.scalars(select(MeasurementRecord.cell_id).where(
            MeasurementRecord.profile == profile, MeasurementRecord.device == device,
            MeasurementRecord.machine == machine,
            MeasurementRecord.batch_size == batch_size, MeasurementRecord.status == "ok")))


def measurements(engine: Engine, cell_id: str | None = None) -> list[MeasurementRecord]:
    """Every measurement (of one cell, if given), oldest first."""
    query = select(MeasurementRecord).order_by(MeasurementRecord.finished_at,
                                               MeasurementRecord.id)
    if cell_id is not None:
        query = query.where(MeasurementRecord.cell_id == cell_id)
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(query))


def measured_profiles(engine: Engine) -> list[str]:
    """Names of the profiles with at least one successful measurement, sorted."""
    with Session(engine) as session:
        return sorted(set(session.scalars(select(MeasurementRecord.profile).where(
            MeasurementRecord.status == "ok"))))


def latest_columns(engine: Engine, profile: str | None = None) -> dict[str, dict[str, Any]]:
    """Result columns of each cell's most recent successful measurement (under ``profile``),
    with its accuracy-mode columns (bench.store.accuracy)."""
    fields = [getattr(MeasurementRecord, _RECORD_FIELDS.get(c, c)) for c in MEASUREMENT_COLUMNS]
    query = select(MeasurementRecord.cell_id, MeasurementRecord.details,
                   *fields).where(MeasurementRecord.status == "ok")
    if profile is not None:
        query = query.where(MeasurementRecord.profile == profile)
    query = query.order_by(MeasurementRecord.finished_at, MeasurementRecord.id)
    with Session(engine) as session:
        return {cell_id: {**dict(zip(MEASUREMENT_COLUMNS, values, strict=True)),
                          **accuracy_columns(details)}
                for cell_id, details, *values in session.execute(query)}


def empty_columns() -> dict[str, Any]:
    """The deploy, probability, measurement and device-accuracy result columns, all None."""
    return dict.fromkeys(DEPLOY_COLUMNS + EVALUATION_COLUMNS + MEASUREMENT_COLUMNS
                         + ACCURACY_COLUMNS)
