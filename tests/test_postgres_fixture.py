"""The PostgreSQL fixtures give a real server and a fresh, empty database per test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, create_engine, text

from tests.postgres import PostgresServer

seen_databases: list[str] = []


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def test_server_is_postgresql(postgres_url: str) -> None:
    with connect(postgres_url) as conn:
        assert "PostgreSQL" in conn.execute(text("select version()")).scalar_one()
        assert str(conn.execute(text("select inet_server_addr()")).scalar_one()) == "127.0.0.1"


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_a_fresh_empty_database(
        run: str, postgres_url: str, postgres_server: PostgresServer) -> None:
    with connect(postgres_url) as conn:
        name = conn.execute(text("select current_database()")).scalar_one()
        tables = conn.execute(text("select count(*) from information_schema.tables "
                                   "where table_schema = 'public'")).scalar_one()
        conn.execute(text("create table leftover (id int)"))
    with connect(postgres_server.url("postgres")) as conn:
        existing = set(conn.execute(text("select datname from pg_database")).scalars())
    assert name.startswith("test_") and name not in seen_databases
    assert tables == 0
    assert not existing & set(seen_databases), "earlier tests' databases were not dropped"
    seen_databases.append(name)


def test_db_url_selects_the_backend(db_url: str | None, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.id == "sqlite":
        assert db_url is None
    else:
        assert db_url is not None and db_url.startswith("postgresql+psycopg://")
