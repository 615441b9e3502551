"""Records name their device and carry a content hash; cells list their artifacts' hashes.

Existing rows get this machine's device name (MEDQ_DEVICE or the host name); their hashes are
filled in by the store when it opens (it knows where the artifacts are).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from bench.store.identity import local_device

revision = "0002"
down_revision = "0001"

_MEASUREMENT_COLUMNS = (
    "cell_id", "profile", "machine", "batch_size", "status", "error", "isolation", "samples_s",
    "latency_ms_mean", "latency_ms_std", "latency_cv", "latency_ms_min", "latency_ms_p50",
    "latency_ms_p90", "latency_ms_p99", "load_time_s", "peak_rss_mb", "size_bytes",
    "packed_size_bytes", "fingerprint", "profile_config", "details", "started_at", "finished_at")


def upgrade() -> None:
    device = local_device()
    with op.batch_alter_table("cells") as cells:
        cells.add_column(sa.Column("device", sa.String(64), nullable=False,
                                   server_default=device))
        cells.add_column(sa.Column("artifact_hashes", sa.JSON))
        cells.add_column(sa.Column("record_hash", sa.String(64)))
    with op.batch_alter_table("cells") as cells:
        cells.alter_column("device", server_default=None)
        cells.create_index("ix_cells_device", ["device"])
        cells.create_index("ix_cells_record_hash", ["record_hash"])

    op.rename_table("measurements", "measurements_0001")
    for column in ("cell_id", "profile", "machine"):
        op.drop_index(f"ix_measurements_{column}", table_name="measurements_0001")
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cell_id", sa.String(32), nullable=False, index=True),
        sa.Column("profile", sa.String(128), nullable=False, index=True),
        sa.Column("device", sa.String(64), nullable=False, index=True),
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
        sa.Column("record_hash", sa.String(64), index=True),
        sa.UniqueConstraint("cell_id", "profile", "device", "machine", "batch_size",
                            name="uq_measurement_key"),
    )
    columns = ", ".join(_MEASUREMENT_COLUMNS)
    op.get_bind().execute(
        sa.text(f"INSERT INTO measurements ({columns}, device) "
                f"SELECT {columns}, :device FROM measurements_0001"),
        {"device": device})
    op.drop_table("measurements_0001")
