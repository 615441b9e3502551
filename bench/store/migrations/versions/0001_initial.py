"""The first store schema: cells and measurements.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "cells",
        sa.Column("cell_id", sa.String(32), primary_key=True),
        sa.Column("parent_id", sa.String(32), index=True),
        sa.Column("grid", sa.String(128), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False, index=True),
        sa.Column("backbone", sa.String(64), nullable=False, index=True),
        sa.Column("method", sa.String(64), nullable=False, index=True),
        sa.Column("w_bits", sa.Integer, nullable=False),
        sa.Column("a_bits", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("error", sa.Text),
        sa.Column("accuracy", sa.Float),
        sa.Column("macro_f1", sa.Float),
        sa.Column("train_seconds", sa.Float),
        sa.Column("split_manifest", sa.String(32), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("provenance", sa.JSON, nullable=False),
        sa.Column("artifacts", sa.String(512)),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cell_id", sa.String(32), nullable=False, index=True),
        sa.Column("profile", sa.String(128), nullable=False, index=True),
        sa.Column("machine", sa.String(16), nullable=False, index=True),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("isolation", sa.String(16), nullable=False),
        sa.Column("samples_s", sa.JSON, nullable=False),
        *(sa.Column(name, sa.Float) for name in (
            "latency_ms_mean", "latency_ms_std", "latency_cv", "latency_ms_min",
            "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "load_time_s",
            "peak_rss_mb")),
        sa.Column("size_bytes", sa.Integer),
        sa.Column("packed_size_bytes", sa.Integer),
        sa.Column("fingerprint", sa.JSON, nullable=False),
        sa.Column("profile_config", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("cell_id", "profile", "machine", "batch_size"),
    )
