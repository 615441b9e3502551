"""A store's SQLite file looked at without writing to it: is it damaged, is it read-only, and
the URL that reads it without creating anything beside it. Light: the standard library only.

SQLite itself would answer a damaged file with an error only once a statement runs, and by then
opening it in WAL mode has created `-wal`/`-shm` files next to it. `check_database` reads the
header and runs SQLite's `quick_check` on a connection that writes nothing (`immutable=1` when
no `-wal` file holds committed data, else `mode=ro`), so a damaged store is refused untouched.
It never does so in a process that holds the file open through SQLite (`in_use`): closing
the file there would drop SQLite's locks and lose that process's later commits.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bench.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

HEADER = b"SQLite format 3\x00"
HEADER_BYTES = 100
QUICK_CHECK_BYTES = 512 << 20
"""Files up to this size get SQLite's `quick_check` (about 0.15 s for 64 MiB); larger ones only
a read of the schema, so that opening a large store stays quick."""


_IN_USE: Counter[tuple[int, int]] = Counter()
"""Open SQLite connections of this process, by the (device, inode) of their database file."""
_RECORD_KEY = "medq_database"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def track_connections(engine: Engine, database: Path) -> None:
    """Count the connections ``engine`` holds open to ``database`` (see `in_use`)."""

    def opened(_connection: object, record: Any) -> None:
        identity = _identity(database)
        if identity is not None:
            record.info[_RECORD_KEY] = identity
            _IN_USE[identity] += 1

    def closed(_connection: object, record: Any) -> None:
        identity = record.info.pop(_RECORD_KEY, None)
        if identity is not None:
            _IN_USE[identity] -= 1
            if _IN_USE[identity] <= 0:
                del _IN_USE[identity]

    from sqlalchemy import event

    event.listen(engine, "connect", opened)
    event.listen(engine, "close", closed)


def in_use(database: Path) -> bool:
    """Whether this process holds a SQLite connection to ``database`` open. Such a file must
    not be opened and closed outside SQLite in this process: POSIX record locks belong to the
    process, so closing any descriptor of the file drops the locks SQLite holds on it, and the
    next outside reader to close its connection then checkpoints and deletes the WAL that this
    process still writes to, losing every later commit."""
    identity = _identity(database)
    return identity is not None and _IN_USE[identity] > 0


class StoreDamaged(UsageError):
    """The store's database file is not a readable SQLite database; nothing was written."""


class StoreReadOnly(UsageError):
    """The store cannot be written, and what was asked needs writing (an upgrade, a run)."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a file-based SQLite URL; None for other databases."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_store_folder(root: Path) -> None:
    """UsageError unless ``root`` is a folder or does not exist yet (a store is a folder)."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"--store {root} is a file, not a store folder; give a folder (it is "
                         "created if missing)")


def writable(root: Path, database: Path | None = None) -> bool:
    """Whether this process may write the store's folder (and its database file)."""
    paths = [root] + ([database] if database is not None and database.exists() else [])
    return all(os.access(p, os.W_OK) for p in paths)


def wal_file(database: Path) -> Path:
    return database.with_name(database.name + "-wal")


def reading_uri(database: Path) -> str:
    """An SQLite URI that opens ``database`` read-only and creates nothing beside it: immutable
    when no `-wal` file exists (the main file is then the whole database), else read-only."""
    mode = "mode=ro" if wal_file(database).exists() else "immutable=1"
    return f"file:{quote(str(database.resolve()))}?{mode}"


def reading_url(database: Path) -> str:
    """`reading_uri` as an SQLAlchemy URL."""
    return f"sqlite:///{reading_uri(database)}&uri=true"


def _damaged(path: Path, reason: str) -> StoreDamaged:
    return StoreDamaged(
        f"the store's database {path} is damaged ({reason}); nothing was written to it. "
        f"Restore the records from a bundle into a fresh store (`bench import BUNDLE --store "
        f"NEW_DIR`), or move {path.name} away to start a fresh store")


def _header_problem(path: Path, size: int) -> str | None:
    with path.open("rb") as handle:
        header = handle.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or not header.startswith(HEADER):
        return "it is not an SQLite database: its first bytes are not SQLite's header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header gives an impossible page size of {page_size}"
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96]
    if counted and pages * page_size > size and not wal_file(path).exists():
        return f"it is truncated: {size} bytes of the {pages * page_size} its header counts"
    return None


def check_database(path: Path) -> None:
    """StoreDamaged naming ``path`` unless it is a readable SQLite database (an empty file is
    one: SQLite's new database); reads only. A file this process holds open through SQLite
    (`in_use`) was checked when it was opened and is not read again while it is."""
    if in_use(path):
        return
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise UsageError(f"the store's database {path} is {kind}{link}; move it away to start "
                         "a fresh store there, or give another --store")
    size = path.stat().st_size
    if size == 0:
        return
    problem = _header_problem(path, size)
    if problem is not None:
        raise _damaged(path, problem)
    statement = "PRAGMA quick_check(1)" if size <= QUICK_CHECK_BYTES else \
        "SELECT count(*) FROM sqlite_master"
    try:
        connection = sqlite3.connect(reading_uri(path), uri=True)
        try:
            rows = connection.execute(statement).fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError as err:
        if "unable to open" in str(err):
            raise UsageError(f"cannot open the store's database {path}: {err}") from err
        raise _damaged(path, f"SQLite: {err}") from err
    except sqlite3.DatabaseError as err:
        raise _damaged(path, f"SQLite: {err}") from err
    if statement.startswith("PRAGMA") and rows != [("ok",)]:
        raise _damaged(path, f"SQLite's quick_check: {rows[0][0] if rows else 'no answer'}")
