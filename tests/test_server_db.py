"""Which database errors the server's write transactions run again (`bench.server.db.transient`):
only conflicts with a concurrent transaction, from real errors of SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import psycopg.errors as pg
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.orm.exc import StaleDataError

from bench.server.db import transient
from bench.store import ResultsStore

SETUP = ("CREATE TABLE parent (id INTEGER PRIMARY KEY)",
         "CREATE TABLE child (id INTEGER PRIMARY KEY, "
         "parent_id INTEGER NOT NULL REFERENCES parent (id), n INTEGER CHECK (n > 0))",
         "INSERT INTO parent (id) VALUES (1)",
         "INSERT INTO child (id, parent_id, n) VALUES (1, 1, 1)")
VIOLATIONS = {
    "unique": ("INSERT INTO child (id, parent_id, n) VALUES (1, 1, 1)", True),
    "not null": ("INSERT INTO child (id, parent_id, n) VALUES (2, NULL, 1)", False),
    "check": ("INSERT INTO child (id, parent_id, n) VALUES (3, 1, -1)", False),
    "foreign key": ("INSERT INTO child (id, parent_id, n) VALUES (4, 99, 1)", False),
}


def _error(engine: Engine, statement: str) -> DBAPIError:
    """The error that running ``statement`` raises."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        try:
            connection.exec_driver_sql(statement)
        except DBAPIError as err:
            return err
    raise AssertionError(f"no error from {statement!r}")


@pytest.fixture
def engine(tmp_path, db_url) -> Iterator[Engine]:
    engine = ResultsStore(tmp_path / "store", db_url).engine
    with engine.begin() as connection:
        for statement in SETUP:
            connection.exec_driver_sql(statement)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("kind", VIOLATIONS)
def test_only_unique_violations_of_the_integrity_errors_are_retried(engine, kind):
    statement, retried = VIOLATIONS[kind]
    error = _error(engine, statement)
    assert isinstance(error, IntegrityError)
    assert transient(error) is retried


def test_other_database_errors_are_not_retried(engine):
    assert not transient(_error(engine, "SELECT * FROM no_such_table"))
    assert not transient(_error(engine, "INSERT INTO child (id, parent_id) VALUES (1)"))


def _wrapped(kind: type[DBAPIError], orig: Exception) -> DBAPIError:
    return kind("INSERT ...", {}, orig)


@pytest.mark.parametrize(("error", "retried"), [
    (_wrapped(IntegrityError, pg.UniqueViolation("duplicate key")), True),
    (_wrapped(IntegrityError, pg.NotNullViolation("null value")), False),
    (_wrapped(IntegrityError, pg.CheckViolation("check")), False),
    (_wrapped(IntegrityError, pg.ForeignKeyViolation("foreign key")), False),
    (_wrapped(OperationalError, pg.DeadlockDetected("deadlock")), True),
    (_wrapped(OperationalError, pg.SerializationFailure("serialize")), True),
    (_wrapped(OperationalError, pg.AdminShutdown("shutdown")), False),
    (_wrapped(OperationalError, sqlite3.OperationalError("database is locked")), True),
    (_wrapped(OperationalError, sqlite3.OperationalError("disk I/O error")), False),
    (_wrapped(IntegrityError, sqlite3.IntegrityError("UNIQUE constraint failed: t.id")), True),
    (_wrapped(IntegrityError, sqlite3.IntegrityError("NOT NULL constraint failed: t.x")), False),
    (_wrapped(ProgrammingError, pg.SyntaxError("syntax")), False),
    (StaleDataError("UPDATE statement on table 'cells' expected to update 1 row(s)"), True),
    (StatementError("bad parameter", "INSERT ...", {}, ValueError("x")), False),
    (ValueError("not a database error"), False),
], ids=lambda value: str(value) if isinstance(value, bool)
   else type(getattr(value, "orig", value)).__name__)
def test_classification_by_sqlstate_and_message(error, retried):
    assert transient(error) is retried
