"""The results store: a database of cell records plus an artifact folder per cell.

A cell's artifacts are written into a staging folder, renamed into place, and only then is its
record committed; a record therefore never points at half-written artifacts, and a crash at any
moment leaves at worst an orphan folder that the next run replaces. Only records with status
"ok" count as done: failed cells are stored with their error and retried by the next run.

A damaged SQLite file is refused before anything is written next to it (see sqlite_file). A
store opened ``readonly`` (the reading verbs) creates nothing and takes no migration lock unless
its schema needs an upgrade; a store that cannot be written is read without any write.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, exists, select
from sqlalchemy.orm import Session

from bench.store import migrate
from bench.store.artifacts import (
    checked_artifact,
    file_sha256,
    hash_tree,
    mismatches,
    staging_folder,
)
from bench.store.identity import local_device
from bench.store.measurements import MeasurementRecord, empty_columns, latest_columns
from bench.store.peek import DB_NAME, LOG_DIR, StoreBusyError, exclusive
from bench.store.records import (
    CellData,
    IngestResult,
    MeasurementData,
    Origin,
    RecordBatch,
    audit_replacement,
    clean_json,
    ingest,
)
from bench.store.schema import RESULT_COLUMNS, CellRecord
from bench.store.sqlite_file import (
    StoreReadOnly,
    check_database,
    check_store_folder,
    reading_url,
    sqlite_file,
    track_connections,
    writable,
)

__all__ = ["DB_NAME", "ResultsStore", "StoreBusyError"]


class ResultsStore:
    """A store at ``root`` (its database: the SQLite file in it, or ``db_url``). ``readonly``:
    for verbs that only read; see the module's docstring."""

    def __init__(self, root: str | Path, db_url: str | None = None, *,
                 readonly: bool = False) -> None:
        self.root = Path(root)
        self.artifact_root = self.root / "artifacts"
        self.staging_root = self.artifact_root / ".staging"
        self.log_dir = self.root / LOG_DIR
        self.url = db_url or f"sqlite:///{self.root / DB_NAME}"
        database = sqlite_file(self.url)
        if database is not None:
            check_store_folder(self.root)
        if database is not None and (database.exists() or database.is_symlink()):
            check_database(database)
        if not (readonly and self._open_to_read(database)):
            self._open_to_write(database)

    def _open_to_read(self, database: Path | None) -> bool:
        """Open without writing anything; False if the schema needs an upgrade, which this
        process may write (StoreReadOnly if it may not)."""
        if database is not None and not database.exists():
            return False
        can_write = database is None or writable(self.root, database)
        self.engine = _engine(self.url if can_write else reading_url(database), can_write,
                              database)
        revision = migrate.current(self.engine)
        if revision == migrate.head() and not self._hashes_missing():
            return True
        self.engine.dispose()
        if not can_write:
            raise StoreReadOnly(
                f"the store {self.root} is read-only and its database has schema revision "
                f"{revision or 'none'}, older than this medq-bench's {migrate.head()}: it must "
                "be upgraded once where it can be written (copy the store somewhere writable "
                "and run `bench results --store COPY` there)")
        return False

    def _open_to_write(self, database: Path | None) -> None:
        if database is not None and self.root.exists() and not writable(self.root, database):
            raise StoreReadOnly(f"the store {self.root} is read-only: this command writes to "
                                "it (the reading verbs results, report, export, compare and "
                                "upload work on a read-only store)")
        for folder in (self.root, self.artifact_root, self.staging_root, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.engine = _engine(self.url, True, database)
        with FileLock(self.root / ".migrate.lock"):
            migrate.upgrade(self.engine)
            self._fill_hashes()

    def _hashes_missing(self) -> bool:
        """Whether some rows still lack the hashes `_fill_hashes` adds."""
        with Session(self.engine) as session:
            return any(session.scalar(select(exists().where(table.record_hash.is_(None))))
                       for table in (CellRecord, MeasurementRecord))

    def exclusive(self, verb: str) -> contextlib.AbstractContextManager[None]:
        """Hold the store's lock for one `bench <verb>`; StoreBusyError if another holds it."""
        return exclusive(self.root, verb)

    @contextmanager
    def run_lock(self) -> Iterator[None]:
        """Exclusive use for one `bench run`; stale staging folders are cleared on entry."""
        with self.exclusive("run"):
            for stale in self.staging_root.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
            yield

    def artifact_dir(self, cell_id: str) -> Path:
        return self.artifact_root / cell_id

    def damaged(self, record: CellRecord) -> list[str]:
        """The files ``record`` lists in its artifact_hashes that are missing from its folder
        or differ from their SHA-256 (all of them when the folder is gone)."""
        return mismatches(self.artifact_dir(record.cell_id), record.artifact_hashes or {})

    def checked_file(self, record: CellRecord, name: str) -> Path:
        """The path of ``record``'s artifact ``name`` once its SHA-256 is the one the record
        states; ArtifactMismatchError naming the file otherwise."""
        return checked_artifact(self.artifact_dir(record.cell_id), record.cell_id,
                                record.artifact_hashes, name)

    def staging(self, cell_id: str) -> contextlib.AbstractContextManager[Path]:
        """A fresh folder for a cell's artifacts; removed if the block raises."""
        return staging_folder(self.staging_root, cell_id)

    def commit(self, record: CellRecord, staged: Path | None = None) -> None:
        """Move staged artifacts into place, then write the record (replacing an older one)
        with its device, its artifacts' hashes and its content hash. The record is validated
        before any file moves."""
        record.device = record.device or local_device()
        files = staged if staged is not None else (
            self.root / record.artifacts if record.artifacts else None)
        record.artifact_hashes = hash_tree(files) if files is not None else {}
        record.record_hash = CellData.of(record).content_hash()
        if staged is not None:
            final = self.artifact_dir(record.cell_id)
            if final.exists():
                shutil.rmtree(final)
            staged.replace(final)
            record.artifacts = str(final.relative_to(self.root))
        with Session(self.engine) as session, session.begin():
            old = session.get(CellRecord, record.cell_id)
            if old is not None and old.record_hash != record.record_hash:
                audit_replacement(session, old, record, record.record_hash, "bench run")
            session.merge(record)

    def ingest(self, batch: RecordBatch, artifacts: dict[str, Path] | None = None,
               origin: Origin | None = None) -> IngestResult:
        """Write ``batch`` in one transaction (see `ingest_in`)."""
        with Session(self.engine) as session, session.begin():
            return self.ingest_in(session, batch, artifacts, origin)

    def ingest_in(self, session: Session, batch: RecordBatch,
                  artifacts: dict[str, Path] | None = None,
                  origin: Origin | None = None) -> IngestResult:
        """Write ``batch`` within the caller's transaction (see records.ingest; ``origin``
        says where the records come from and who signed them).

        ``artifacts`` maps cell ids to folders holding some of the cell's artifact files,
        which the caller has checked against the cell's artifact_hashes. For every cell whose
        stored record is that cell (written now or before), files the store lacks, or holds
        with another hash, are put in place by atomic renames before the transaction commits;
        files a replaced record left that the new one does not list are removed only once the
        transaction has committed. Every reader checks a file against its record's hash, so a
        rollback in between leaves nothing that passes for a record's file.
        """
        artifacts = artifacts or {}
        result = ingest(session, batch, origin)
        replaced = set(result.replaced)
        for cell in batch.cells:
            source = artifacts.get(cell.cell_id)
            row = session.get(CellRecord, cell.cell_id)
            digest = cell.content_hash()
            if row is None or row.record_hash != digest:
                continue
            final = self.artifact_dir(cell.cell_id)
            if digest in replaced:
                event.listen(session, "after_commit", functools.partial(
                    _drop_unlisted, final, dict(cell.artifact_hashes)), once=True)
            if source is not None:
                _add_files(source, final, cell.artifact_hashes)
                row.artifacts = str(final.relative_to(self.root))
        return result

    def _fill_hashes(self) -> None:
        """Hashes for rows written before records had them (see migration 0002); checked at
        every open (an indexed query), so an interrupted fill is finished by the next one."""
        with Session(self.engine) as session, session.begin():
            for cell in session.scalars(select(CellRecord).where(
                    CellRecord.record_hash.is_(None))):
                cell.artifact_hashes = hash_tree(self.root / cell.artifacts) \
                    if cell.artifacts else {}
                cell.record_hash = CellData.of(cell).content_hash()
            for measurement in session.scalars(select(MeasurementRecord).where(
                    MeasurementRecord.record_hash.is_(None))):
                measurement.record_hash = MeasurementData.of(measurement).content_hash()

    def get(self, cell_id: str) -> CellRecord | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(CellRecord, cell_id)

    def is_done(self, cell_id: str) -> bool:
        record = self.get(cell_id)
        return record is not None and record.status == "ok"

    def done_ids(self) -> set[str]:
        with Session(self.engine) as session:
            return set(session.scalars(select(CellRecord.cell_id)
                                       .where(CellRecord.status == "ok")))

    def records(self) -> list[CellRecord]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(CellRecord).order_by(
                CellRecord.dataset, CellRecord.backbone, CellRecord.method, CellRecord.w_bits,
                CellRecord.a_bits, CellRecord.seed)))

    def rows(self, profile: str | None = None) -> list[dict[str, Any]]:
        """One flat dict per cell with the public result columns, stage columns and the
        cell's most recent successful measurement (under ``profile`` if given)."""
        measured = latest_columns(self.engine, profile)
        return [{**{c: getattr(r, c) for c in RESULT_COLUMNS}, **empty_columns(),
                 **stage_columns(r), **measured.get(r.cell_id, {})}
                for r in self.records()]


def stage_columns(record: CellRecord) -> dict[str, Any]:
    """Flat result columns that a cell's post-training stages reported (see runner.stages)."""
    columns: dict[str, Any] = {}
    for value in (record.metrics or {}).values():
        if isinstance(value, dict) and isinstance(value.get("columns"), dict):
            columns.update(value["columns"])
    return columns


def json_dumps(value: Any) -> str:
    """JSON columns store NaN and infinities as null, on every backend (PostgreSQL's JSON
    type has no NaN), so a record reads back the same wherever it is stored."""
    return json.dumps(clean_json(value))


def _engine(url: str, writing: bool, database: Path | None = None) -> Engine:
    """The store's engine; SQLite in WAL mode when it may write, else as a query-only reader,
    its connections to the file ``database`` counted (`sqlite_file.in_use`)."""
    engine = create_engine(url, json_serializer=json_dumps, **_connect_args(url))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas if writing else _sqlite_query_only)
    if database is not None:
        track_connections(engine, database)
    return engine


def _connect_args(url: str) -> dict[str, Any]:
    """PostgreSQL sessions in UTC, so timestamps without time zone are UTC everywhere."""
    if url.startswith("postgresql"):
        return {"connect_args": {"options": "-c timezone=UTC"}}
    return {}


def _add_files(source: Path, final: Path, expected: dict[str, str]) -> None:
    """Copy the files of ``source`` that ``final`` lacks or holds with another hash than
    ``expected``, each through a temporary name and an atomic rename."""
    for path in sorted(source.rglob("*")):
        name = path.relative_to(source).as_posix()
        target = final / name
        if not path.is_file() or (target.is_file() and file_sha256(target) == expected.get(name)):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        shutil.copyfile(path, partial)
        partial.replace(target)


def _drop_unlisted(folder: Path, expected: dict[str, str], _session: Any = None) -> None:
    """Remove the files a replaced record left in ``folder`` that the new record does not
    list with the same hash (an after-commit hook)."""
    for name, sha in hash_tree(folder).items():
        if expected.get(name) != sha:
            (folder / name).unlink(missing_ok=True)


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=1")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
