"""A device's public keys belong to the device, not to the token that registered them: they stay
registered when the token is revoked, until `bench serve token create --allow-unsigned` drops
them (recorded here as the time they were dropped).

Revision ID: 0005_device_keys
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_device_keys"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("devices") as devices:
        devices.add_column(sa.Column("keys_dropped_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("devices") as devices:
        devices.drop_column("keys_dropped_at")
