"""An upload, from request body to committed rows: its signature checked against the device's
registered keys before anything is parsed or decompressed, then parsed, checked against the
token's device (a bundle's declared devices before its members are read) and the clock, and
written with its `uploads` row and its records' origins in one transaction (retried on
conflicts)."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.exchange.bundle import (
    BUNDLE_CONTENT_TYPE,
    UNPACK_FLOOR,
    UNPACK_PER_BYTE,
    BundleDeviceError,
    BundleError,
    Limits,
    read_bundle,
)
from bench.exchange.bundle import JSON_CONTENT_TYPE as JSON_TYPE
from bench.exchange.manifest import VERSION
from bench.exchange.signing import SignatureError, verify_upload
from bench.server import db
from bench.server.tables import DeviceRecord, UploadRecord
from bench.server.tokens import device_keys, utc_now
from bench.store import CellRecord, ResultsStore
from bench.store.bounds import check_received
from bench.store.records import (
    RECEIVED,
    FutureRecordError,
    IngestResult,
    Origin,
    RecordBatch,
    audit_replacement,
    check_times,
)

BUNDLE_TYPES = frozenset({BUNDLE_CONTENT_TYPE, "application/x-gzip"})
CHUNK = 500
UNPACK_RATIO = 20
"""A bundle may unpack to at most this many times the body limit (against gzip bombs), and to
at most UNPACK_PER_BYTE times its own size (plus UNPACK_FLOOR)."""


class StagingBudget:
    """The staging space that bundle uploads being unpacked at the same time may take together:
    each reserves the most it may unpack to before it unpacks, and gets 503 (retry) while the
    others hold too much of it."""

    def __init__(self, total_bytes: int) -> None:
        self.total, self.held = total_bytes, 0
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        with self._lock:
            if self.held + size > self.total:
                raise UploadRefused(503, "the server is unpacking other uploads and has no "
                                         "staging space left for this one; retry")
            self.held += size
        try:
            yield
        finally:
            with self._lock:
                self.held -= size


class UploadRefused(Exception):
    """The upload is not accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def receive(store: ResultsStore, device: str, content_type: str, body: bytes,
            max_bytes: int, signature: str | None = None,
            staging: StagingBudget | None = None) -> tuple[str, IngestResult]:
    """Store the records (and bundle artifacts) in ``body`` for ``device``; ``signature`` is
    the request's `X-Medq-Signature` header; ``staging``: the space bundles being unpacked may
    share (default: unshared). Returns the upload's id and what it did. Raises pydantic's
    ValidationError for invalid JSON records, UploadRefused otherwise."""
    digest = hashlib.sha256(body).hexdigest()
    upload_id = uuid.uuid4().hex
    origin = check_signature(store, device, body, signature, upload_id)
    if content_type == JSON_TYPE:
        batch = RecordBatch.model_validate_json(body, context=RECEIVED)
        check_devices(batch, device)
        check_clock(batch)
        check_measurements(batch)
        return save(store, device, batch, {}, digest, origin)
    if content_type in BUNDLE_TYPES:
        with _bundle(body, max_bytes, store.staging_root, device, staging) as (batch,
                                                                                artifacts):
            check_devices(batch, device)
            return save(store, device, batch, artifacts, digest, origin)
    raise UploadRefused(415, f"Content-Type must be {JSON_TYPE} (records) or "
                             f"{BUNDLE_CONTENT_TYPE} (a bundle), not {content_type or 'missing'!r}")


def check_signature(store: ResultsStore, device: str, body: bytes, header: str | None,
                    upload_id: str) -> Origin:
    """The origin of the upload's records: 403 if its signature does not verify, or if the
    device has registered keys and the body is not signed by one of them."""
    with Session(store.engine) as session:
        keys = device_keys(session, device)
    key = None
    if header is not None:
        try:
            key = verify_upload(header, body)
        except SignatureError as err:
            raise UploadRefused(403, str(err)) from err
    source = f"upload {upload_id}"
    if not keys:
        return Origin(source, key.fingerprint if key else None)
    if key is None:
        raise UploadRefused(403, f"device {device!r} has a registered public key, so its "
                                 "uploads must be signed (create the key on the device with "
                                 "`bench keys create`; `bench upload` signs with it)")
    if key.raw not in {k.raw for k in keys}:
        raise UploadRefused(403, f"the upload is signed by key {key.fingerprint}, which is not "
                                 f"registered for device {device!r}")
    return Origin(source, key.fingerprint, device, True)


def check_measurements(batch: RecordBatch) -> None:
    """422 if a measurement is not physically possible (see bounds.check_received)."""
    try:
        check_received(batch.measurements)
    except ValueError as err:
        raise UploadRefused(422, str(err)) from err


def check_clock(batch: RecordBatch) -> None:
    """422 if a record's times lie in the future (see records.check_times)."""
    try:
        check_times(batch)
    except FutureRecordError as err:
        raise UploadRefused(422, str(err)) from err


@contextmanager
def _bundle(body: bytes, max_bytes: int, workdir: Path, device: str,
            staging: StagingBudget | None) -> Iterator[tuple[RecordBatch, dict[str, Path]]]:
    """The checked bundle's records and artifact folders, unpacked under ``workdir`` (on the
    artifacts' file system); what it unpacks to, and its records files, are capped at
    UNPACK_RATIO times the body limit and UNPACK_PER_BYTE times the body, and reserved in
    ``staging`` first. Records of another device than ``device`` get 403, from the manifest's
    declared devices before any member is read."""
    cap = min(UNPACK_RATIO * max_bytes, UNPACK_PER_BYTE * len(body) + UNPACK_FLOOR)
    if staging is not None:
        cap = min(cap, staging.total)
    limits = Limits(unpacked_bytes=min(Limits().unpacked_bytes, cap),
                    records_bytes=min(Limits().records_bytes, cap))
    with ExitStack() as stack:
        if staging is not None:
            stack.enter_context(staging.reserve(limits.unpacked_bytes))
        try:
            loaded = stack.enter_context(read_bundle(io.BytesIO(body), max_bytes,
                                                     limits=limits, workdir=workdir,
                                                     device=device, min_version=VERSION))
        except BundleDeviceError as err:
            raise UploadRefused(403, str(err)) from err
        except BundleError as err:
            raise UploadRefused(422, f"invalid bundle: {err}") from err
        yield loaded.batch, loaded.artifact_dirs


def check_devices(batch: RecordBatch, device: str) -> None:
    """403 unless every record is ``device``'s."""
    others = sorted(batch.devices() - {device})
    if others:
        raise UploadRefused(403, f"this token writes records of device {device!r} only; the "
                                 f"upload has records of {', '.join(map(repr, others[:5]))}")


def save(store: ResultsStore, device: str, batch: RecordBatch, artifacts: dict[str, Path],
         payload_sha256: str, origin: Origin | None = None) -> tuple[str, IngestResult]:
    """Write ``batch`` and its upload row in one transaction, committed when this returns.

    The device's row is locked first (PostgreSQL; SQLite's writers are serial anyway), so two
    uploads of one device take turns instead of racing on the same keys."""

    def work(session: Session) -> tuple[str, IngestResult]:
        now = utc_now()
        known = session.get(DeviceRecord, device, with_for_update=True)
        if known is None:
            known = DeviceRecord(name=device, created_at=now)
            session.add(known)
        _check_owners(session, batch, device, origin is not None and origin.verified)
        result = store.ingest_in(session, batch, artifacts, origin)
        upload_id = origin.source.removeprefix("upload ") if origin else uuid.uuid4().hex
        upload = UploadRecord(id=upload_id, device=device, payload_sha256=payload_sha256,
                              received_at=now, counts=result.as_counts())
        session.add(upload)
        known.last_upload_at = now
        return upload.id, result

    return db.write(store.engine, work)


def _check_owners(session: Session, batch: RecordBatch, device: str, signed: bool) -> None:
    """403 if a cell of the batch is stored as another device's record, unless the upload is
    ``signed`` by a key registered for ``device`` and that other device has no registered key:
    cell ids follow from the grid, so anyone with a token can upload a record under a cell id
    first; such a squatted record gives way to the signed one (kept in the audit table), and a
    device with a key can never be displaced."""
    cells = {cell.cell_id: cell for cell in batch.cells}
    ids = sorted(cells)
    keyed: dict[str, bool] = {}
    for start in range(0, len(ids), CHUNK):
        for clash in session.scalars(select(CellRecord).where(
                CellRecord.cell_id.in_(ids[start:start + CHUNK]),
                CellRecord.device != device)):
            if clash.device not in keyed:
                keyed[clash.device] = bool(device_keys(session, clash.device))
            if not signed or keyed[clash.device]:
                raise UploadRefused(403, f"cell {clash.cell_id} is stored as device "
                                         f"{clash.device!r}'s record; a token writes only its "
                                         "own device's records")
            new = cells[clash.cell_id]
            audit_replacement(session, clash, new, new.content_hash(),
                              f"signed upload of {device} over unsigned {clash.device}")
            session.delete(clash)
    session.flush()
