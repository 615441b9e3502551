"""Bring a store's database to the current schema with Alembic (bench/store/migrations).

A database made before migrations existed (tables but no `alembic_version`) is stamped with
the first revision, whose tables it has, and upgraded from there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"
log = logging.getLogger(__name__)
# Alembic logs its set-up at INFO on every open; our own line says when a store is upgraded.
logging.getLogger("alembic").setLevel(logging.WARNING)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> bool:
    """Migrate ``engine``'s database to the newest schema; True if anything changed."""
    config = _config()
    target = head()
    with engine.begin() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        if revision == target:
            return False
        config.attributes["connection"] = connection
        if revision is None and inspect(connection).has_table("cells"):
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")
    log.info("store schema upgraded from %s to %s", revision or "none", target)
    return True
