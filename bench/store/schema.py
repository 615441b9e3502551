"""Tables of the results store. Plain SQLAlchemy: SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class CellRecord(Base):
    """One grid cell: its identity, outcome, headline metrics and provenance. Its exchange form,
    bench.store.records.CellData, is made from these columns (all but STORE_ONLY's)."""

    __tablename__ = "cells"

    cell_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    grid: Mapped[str] = mapped_column(String(128))
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    backbone: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(64), index=True)
    w_bits: Mapped[int] = mapped_column(Integer)
    a_bits: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    accuracy: Mapped[float | None] = mapped_column(Float)
    macro_f1: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    split_manifest: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifacts: Mapped[str | None] = mapped_column(String(512))
    artifact_hashes: Mapped[dict[str, str] | None] = mapped_column(JSON)
    record_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)


class MeasurementRecord(Base):
    """Latency samples and their summary for one deployed cell on one machine and profile. Its
    exchange form, bench.store.records.MeasurementData, is made from these columns."""

    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("cell_id", "profile", "device", "machine", "batch_size",
                                       name="uq_measurement_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cell_id: Mapped[str] = mapped_column(String(32), index=True)
    profile: Mapped[str] = mapped_column(String(128), index=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    machine: Mapped[str] = mapped_column(String(16), index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    isolation: Mapped[str] = mapped_column(String(16))
    samples_s: Mapped[list[float]] = mapped_column(JSON, default=list)
    latency_ms_mean: Mapped[float | None] = mapped_column(Float)
    latency_ms_std: Mapped[float | None] = mapped_column(Float)
    latency_cv: Mapped[float | None] = mapped_column(Float)
    latency_ms_min: Mapped[float | None] = mapped_column(Float)
    latency_ms_p50: Mapped[float | None] = mapped_column(Float)
    latency_ms_p90: Mapped[float | None] = mapped_column(Float)
    latency_ms_p99: Mapped[float | None] = mapped_column(Float)
    load_time_s: Mapped[float | None] = mapped_column(Float)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    packed_size_bytes: Mapped[int | None] = mapped_column(Integer)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)
    profile_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)
    record_hash: Mapped[str | None] = mapped_column(String(64), index=True)


class RecordReplacement(Base):
    """The audit of replaced records: one row each time a stored record gave way to a better
    one (or was measured or run again), with both hashes, so no replacement is silent."""

    __tablename__ = "record_replacements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    cell_id: Mapped[str] = mapped_column(String(32), index=True)
    record_key: Mapped[str] = mapped_column(String(400))
    old_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    new_hash: Mapped[str] = mapped_column(String(64))
    old_status: Mapped[str] = mapped_column(String(16))
    new_status: Mapped[str] = mapped_column(String(16))
    old_finished_at: Mapped[datetime] = mapped_column(DateTime)
    new_finished_at: Mapped[datetime] = mapped_column(DateTime)
    replaced_at: Mapped[datetime] = mapped_column(DateTime)
    source: Mapped[str] = mapped_column(String(200))


class RecordOrigin(Base):
    """Where a record (by content hash) came from into this store: the bundle or upload, and
    who signed it. Records made in the store itself have no row."""

    __tablename__ = "record_origins"

    record_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(200))
    signer_key: Mapped[str | None] = mapped_column(String(64))
    signer: Mapped[str | None] = mapped_column(String(128))
    verified: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(DateTime)


RESULT_COLUMNS = ("cell_id", "dataset", "backbone", "method", "w_bits", "a_bits", "seed",
                  "status", "accuracy", "macro_f1", "train_seconds", "parent_id", "grid",
                  "split_manifest", "error", "started_at", "finished_at")
