"""A quick look into a store with the standard library only: which cells it holds done, and its
per-verb locks.

Opening a `ResultsStore` loads SQLAlchemy and Alembic and checks the schema, about a second on
a small machine; a `bench run` with nothing to do, and a dry run, only need the ids of the cells
stored ok. `peek_done_ids` reads them straight from the SQLite file, read-only, when its schema
is this code's, without writing anything beside it. A damaged file is refused as opening the
store would refuse it; anything else unusual (no file, another schema revision) gives None, and
the caller opens the store properly (which migrates it, or names what is wrong).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from bench.errors import UsageError
from bench.store.sqlite_file import StoreReadOnly, check_database, in_use, reading_uri

DB_NAME = "medq.sqlite"
LOG_DIR = "logs"
VERSIONS = Path(__file__).with_name("migrations") / "versions"
_REVISION = re.compile(r"""^(down_)?revision\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class StoreBusyError(UsageError):
    """Another process holds this store's lock for the verb: a usage error (exit 2), the
    message names the verb and the store."""


@contextmanager
def exclusive(root: Path, verb: str) -> Iterator[None]:
    """Hold the store's lock for one `bench <verb>`; StoreBusyError if another holds it."""
    lock = FileLock(root / f".{verb}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as err:
        raise StoreBusyError(f"another bench {verb} is using the store {root}") from err
    except OSError as err:   # EROFS, EACCES: the lock file cannot be made
        raise StoreReadOnly(f"cannot take the lock {lock.lock_file} of bench {verb} on the "
                            f"store {root}: {err.strerror or err}; bench {verb} writes to "
                            "the store (the reading verbs results, report, export, compare "
                            "and upload work on a read-only store)") from err
    try:
        yield
    finally:
        lock.release()


def schema_head() -> str | None:
    """The newest schema revision, read from the migration files as Alembic would (the one
    revision no other revises); None if there is not exactly one."""
    revisions, revised = set(), set()
    for path in VERSIONS.glob("*.py"):
        for down, value in _REVISION.findall(path.read_text()):
            (revised if down else revisions).add(value)
    heads = revisions - revised
    return next(iter(heads)) if len(heads) == 1 else None


def peek_done_ids(root: Path) -> set[str] | None:
    """Ids of the cells stored ok in the SQLite store at ``root``; None when it must be opened
    as a `ResultsStore` to tell (no database, another schema revision, or a database this
    process already holds open, see `in_use`). StoreDamaged naming the file if it is not a
    readable SQLite database."""
    path = root / DB_NAME
    if not path.is_file() or path.stat().st_size == 0 or in_use(path):
        return None
    check_database(path)
    head = schema_head()
    try:
        connection = sqlite3.connect(reading_uri(path), uri=True)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            if head is None or row is None or row[0] != head:
                return None
            return {cell_id for (cell_id,) in connection.execute(
                "SELECT cell_id FROM cells WHERE status = 'ok'")}
        finally:
            connection.close()
    except sqlite3.Error:
        return None
