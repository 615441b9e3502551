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
from sqlalchemy import Connection, Engine, inspect, text

from bench.errors import UsageError

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


class StoreFromNewerVersion(UsageError):
    """The store's schema revision is one this medq-bench does not know: a newer one made it."""


def _maker(connection: Connection) -> str:
    """The medq-bench version of the store's newest cell record, where it can be read."""
    try:
        version = connection.execute(text(
            "SELECT json_extract(provenance, '$.packages.\"medq-bench\"') FROM cells "
            "ORDER BY finished_at DESC LIMIT 1")).scalar()
    except Exception:  # another schema, another backend: say what is known
        return ""
    return f"; its newest record was made by medq-bench {version}" if version else ""


def check_known(connection: Connection, revision: str | None) -> None:
    """StoreFromNewerVersion naming ``revision`` unless this medq-bench's migrations know it."""
    if revision is None:
        return
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision not in known:
        from bench import __version__

        raise StoreFromNewerVersion(
            f"the store's database has schema revision {revision}, written by a newer "
            f"medq-bench than this one ({__version__}, which knows revisions up to {head()})"
            f"{_maker(connection)}. Upgrade medq-bench to open it; nothing was written")


def upgrade(engine: Engine) -> bool:
    """Migrate ``engine``'s database to the newest schema; True if anything changed.
    StoreFromNewerVersion if a newer medq-bench made it."""
    config = _config()
    target = head()
    with engine.begin() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        if revision == target:
            return False
        check_known(connection, revision)
        config.attributes["connection"] = connection
        if revision is None and inspect(connection).has_table("cells"):
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")
    log.info("store schema upgraded from %s to %s", revision or "none", target)
    return True
