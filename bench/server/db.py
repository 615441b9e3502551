"""The server's store and its write transactions: serialised on SQLite, retried on conflicts.

On SQLite a write transaction starts with BEGIN IMMEDIATE, so writers queue on the busy
timeout instead of failing on a stale snapshot; on PostgreSQL two uploads inserting the same
new key, or a deadlock, abort one of them. Such conflicts (`transient`) run the whole
transaction again; any other database error (a NOT NULL, check or foreign-key violation) is
raised at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from bench.server.settings import ServerSettings
from bench.store import ResultsStore

ATTEMPTS = 6
UNIQUE_STATE = "23505"
"""PostgreSQL unique violation: a concurrent transaction inserted the same new key."""
RETRY_STATES = frozenset({"40001", "40P01"})
"""PostgreSQL serialization failure and deadlock."""
SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})

T = TypeVar("T")
log = logging.getLogger(__name__)


def open_store(settings: ServerSettings) -> ResultsStore:
    """The server's results store (migrated), with a busy timeout on SQLite."""
    store = ResultsStore(settings.data_dir, settings.db_url)
    if store.engine.dialect.name == "sqlite":
        event.listen(store.engine, "connect", _busy_timeout)
        store.engine.dispose()
    return store


def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    """Wait up to 30 s for SQLite's write lock."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def transient(error: BaseException) -> bool:
    """A conflict with a concurrent transaction, which running this one again resolves: a
    unique-key violation (the same new key inserted concurrently), a deadlock or serialization
    failure, SQLite's "database is locked", or an ORM row changed under us."""
    if isinstance(error, StaleDataError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    orig = error.orig
    if isinstance(error, IntegrityError):
        return (getattr(orig, "sqlstate", None) == UNIQUE_STATE
                or getattr(orig, "sqlite_errorname", None) in SQLITE_UNIQUE
                or str(orig).startswith("UNIQUE constraint failed"))
    return getattr(orig, "sqlstate", None) in RETRY_STATES or "database is locked" in str(orig)


def write(engine: Engine, work: Callable[[Session], T], attempts: int | None = None) -> T:
    """Run ``work(session)`` in one committed write transaction, again on a transient
    conflict (with jittered back-off, ``attempts`` times in all, default ATTEMPTS); its
    result once committed."""
    attempts = attempts or ATTEMPTS
    for attempt in range(attempts):
        try:
            with Session(engine) as session, session.begin():
                if engine.dialect.name == "sqlite":
                    session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                return work(session)
        except (DBAPIError, StaleDataError) as err:
            if attempt == attempts - 1 or not transient(err):
                raise
            log.warning("write conflict (%s), running the transaction again",
                        type(getattr(err, "orig", err)).__name__)
            time.sleep(0.02 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")
