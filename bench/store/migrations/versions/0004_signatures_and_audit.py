"""Signed results: a device token may carry the device's public key; every replaced record
is kept in an audit table; each received record remembers where it came from and who signed it.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as tokens:
        tokens.add_column(sa.Column("public_key", sa.String(64)))
    op.create_table(
        "record_replacements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("cell_id", sa.String(32), nullable=False, index=True),
        sa.Column("record_key", sa.String(400), nullable=False),
        sa.Column("old_hash", sa.String(64), index=True),
        sa.Column("new_hash", sa.String(64), nullable=False),
        sa.Column("old_status", sa.String(16), nullable=False),
        sa.Column("new_status", sa.String(16), nullable=False),
        sa.Column("old_finished_at", sa.DateTime, nullable=False),
        sa.Column("new_finished_at", sa.DateTime, nullable=False),
        sa.Column("replaced_at", sa.DateTime, nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
    )
    op.create_table(
        "record_origins",
        sa.Column("record_hash", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("device", sa.String(64), nullable=False, index=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("signer_key", sa.String(64)),
        sa.Column("signer", sa.String(128)),
        sa.Column("verified", sa.Boolean, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
