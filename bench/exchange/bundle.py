"""Offline bundles: a store's records, and chosen artifact files, in one gzip'd tar.

Members, all under the top folder `medq-bundle/`, in this order: `manifest.json` (format,
version, source, filters, counts, the SHA-256 and size of every other member, the devices of
the records, a digest of itself, and the exporter's Ed25519 signature of that digest when it has
a signing key), `records/cells.jsonl` and `records/measurements.jsonl` (one CellData /
MeasurementData JSON a line), then `artifacts/<cell_id>/<path>` files, each equal to its cell's
recorded artifact hash.

`read_bundle` streams a bundle into a scratch folder and refuses it, with one `BundleError`, at
the first thing wrong: a truncated or corrupt gzip stream, a member that is not a plain file
under the top folder, a name the manifest does not list (or a listed one missing), any hash or
size that does not match, an edited manifest or a signature that does not verify (or, with
``trust``, a bundle not signed by a trusted key), records that do not validate or lie in the
future, more bytes or members than the limits. Only a bundle that passes every check reaches
`import_bundle`, which writes its records and files in one store transaction.

Work and memory stay bounded whatever the bundle holds: the decompressed tar stream is counted
as it is read, so a member header (pax or GNU long-name data, which `tarfile` reads whole)
larger than HEADER_BYTES, a stream longer than its members may take, a member larger than the
manifest declares, data after the end of the archive, or an artifact its cell's record does not
list (the records come first) is refused before it is decompressed. The manifest, read first,
is checked for its signature and (on the server) its devices before anything else is read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal, TypeVar, get_args

from pydantic import ValidationError
from sqlalchemy.orm import Session

from bench.errors import UsageError
from bench.exchange.manifest import (
    CELLS,
    FORMAT,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MEASUREMENTS,
    TOP,
    VERSION,
    BundleError,
    Manifest,
    check_trust,
    first_error,
    parse_manifest,
    seal,
)
from bench.exchange.scratch import Scratch
from bench.exchange.signing import PublicKey, Signer
from bench.store.artifacts import file_sha256
from bench.store.bounds import check_received
from bench.store.database import ResultsStore
from bench.store.deploy import deploy_files
from bench.store.identity import local_device
from bench.store.query import RecordFilter
from bench.store.records import (
    RECEIVED,
    CellData,
    IngestResult,
    MeasurementData,
    Origin,
    RecordBatch,
    check_times,
)

__all__ = ["ARTIFACT_MODES", "BUNDLE_CONTENT_TYPE", "CELLS", "JSON_CONTENT_TYPE", "MANIFEST",
           "MEASUREMENTS", "TOP", "ArtifactMode", "BundleDeviceError", "BundleError",
           "ExportSummary", "ImportResult", "Limits", "LoadedBundle", "Manifest",
           "export_bundle", "import_bundle", "read_bundle", "seal"]

ArtifactMode = Literal["none", "deploy", "all"]
"""Which artifact files travel with the cells: none, the deploy files, or all."""
ARTIFACT_MODES: tuple[str, ...] = get_args(ArtifactMode)
BUNDLE_CONTENT_TYPE = "application/gzip"
JSON_CONTENT_TYPE = "application/json"
"""The two bodies `POST /api/v1/uploads` takes: a bundle, or a RecordBatch as JSON."""

MAX_BUNDLE_BYTES = 4 << 30
"""Default limit on the bundle as read (gzip'd bytes)."""
MAX_UNPACKED_BYTES = 4 << 30
MAX_MEMBER_BYTES = 2 << 30
MAX_RECORDS_BYTES = 1 << 30
MAX_MEMBERS = 200_000
CHUNK = 1 << 20
HEADER_BYTES = 64 << 10
"""The most one member's headers (with pax or GNU long-name data) may take."""
MEMBER_OVERHEAD = 4 * tarfile.BLOCKSIZE
"""Tar bytes a member may take besides its data: its header, a pax header and its data block,
and the padding of its data to a whole block."""
STREAM_SLACK = 64 << 10
"""Tar bytes besides the members: the end-of-archive blocks and the padding of the record."""
UNPACK_PER_BYTE = 200
"""The decompressed stream may be at most this many times the gzip'd bytes read so far (plus
UNPACK_FLOOR): a bomb is refused after reading little of it, whatever its manifest declares.
Records compress well (hand-made measurements with 50 near-equal samples each: 77x, their cells
38x), deflate at most about 1,032x, so 200x refuses bombs and no real bundle."""
UNPACK_FLOOR = 1 << 20
WORK_PREFIX = "medq-bundle-"

_SPECIAL = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link",
            tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "FIFO"}


@dataclass(frozen=True)
class Limits:
    """Bounds on what a bundle may unpack to (the gzip'd size is `max_bytes`): the members'
    data in all, one member, each records file, and the number of members. The decompressed
    stream may exceed ``unpacked_bytes`` only by MEMBER_OVERHEAD a member and STREAM_SLACK."""

    unpacked_bytes: int = MAX_UNPACKED_BYTES
    member_bytes: int = MAX_MEMBER_BYTES
    members: int = MAX_MEMBERS
    records_bytes: int = MAX_RECORDS_BYTES
    per_byte: int = UNPACK_PER_BYTE
    """The most decompressed bytes per gzip'd byte read (beyond UNPACK_FLOOR)."""

    @property
    def stream_bytes(self) -> int:
        """The most the decompressed tar stream may hold."""
        return self.unpacked_bytes + self.members * MEMBER_OVERHEAD + STREAM_SLACK


# ---------------------------------------------------------------- export


@dataclass
class ExportSummary:
    """What `export_bundle` wrote; `skipped` names artifact files left out because the store
    lacks them or they differ from their recorded hash; `signer` is the key that signed it."""

    path: Path
    cells: int
    measurements: int
    files: int
    size_bytes: int
    sha256: str
    skipped: list[str] = field(default_factory=list)
    signer: PublicKey | None = None


def _chosen_files(cell: CellData, mode: ArtifactMode) -> list[str]:
    if mode == "all":
        return sorted(cell.artifact_hashes)
    return deploy_files(cell) if mode == "deploy" else []


def export_bundle(store: ResultsStore, out: str | Path, record_filter: RecordFilter | None = None,
                  artifacts: ArtifactMode = "none", signer: Signer | None = None
                  ) -> ExportSummary:
    """Write the records ``record_filter`` selects (and their ``artifacts`` files) to the
    bundle ``out``, atomically: a temporary file renamed into place; its manifest signed by
    ``signer`` if given. Reads the store only."""
    if artifacts not in ARTIFACT_MODES:
        raise UsageError(f"artifacts must be one of {', '.join(ARTIFACT_MODES)}, not {artifacts!r}")
    record_filter = record_filter or RecordFilter()
    out = Path(out)
    try:
        device = local_device()
    except ValueError as err:
        raise UsageError(str(err)) from err
    with Session(store.engine) as session:
        rows = list(session.scalars(record_filter.cells()))
        cells = [CellData.of(row) for row in rows]
        folders = {row.cell_id: row.artifacts for row in rows}
        measurements = [MeasurementData.of(row)
                        for row in session.scalars(record_filter.measurements())]
    out.parent.mkdir(parents=True, exist_ok=True)
    with Scratch(f".{out.name}.", out.parent) as work:
        files = {CELLS: _write_lines(work / "cells.jsonl", cells),
                 MEASUREMENTS: _write_lines(work / "measurements.jsonl", measurements)}
        sources = {CELLS: work / "cells.jsonl", MEASUREMENTS: work / "measurements.jsonl"}
        skipped = _add_artifacts(store.root, cells, folders, artifacts, files, sources)
        manifest = seal({
            "format": FORMAT, "version": VERSION,
            "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "source": {"device": device},
            "filters": record_filter.model_dump(mode="json"),
            "counts": {"cells": len(cells), "measurements": len(measurements)},
            "files": files,
            "sizes": {name: sources[name].stat().st_size for name in files},
            "devices": sorted({r.device for r in (*cells, *measurements)})}, signer)
        partial = work / "bundle.tar.gz"
        _write_tar(partial, manifest, files, sources)
        size, digest = partial.stat().st_size, file_sha256(partial)
        partial.replace(out)
    return ExportSummary(out, len(cells), len(measurements), len(files) - 2, size, digest,
                         skipped, signer.public if signer else None)


def _add_artifacts(root: Path, cells: list[CellData], folders: dict[str, str | None],
                   mode: ArtifactMode, files: dict[str, str], sources: dict[str, Path]
                   ) -> list[str]:
    """Add the chosen artifact files that match their recorded hash to ``files`` (member
    name: SHA-256) and ``sources`` (member name: path); returns those left out, and why."""
    skipped = []
    for cell in cells:
        folder = folders[cell.cell_id]
        for name in _chosen_files(cell, mode):
            path = root / folder / name if folder else None
            expected = cell.artifact_hashes[name]
            if path is None or not path.is_file():
                skipped.append(f"{cell.cell_id}/{name}: not in the store")
            elif file_sha256(path) != expected:
                skipped.append(f"{cell.cell_id}/{name}: differs from its recorded hash")
            else:
                files[f"artifacts/{cell.cell_id}/{name}"] = expected
                sources[f"artifacts/{cell.cell_id}/{name}"] = path
    return skipped


def _write_lines(path: Path, records: list[CellData] | list[MeasurementData]) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for record in records:
            line = record.model_dump_json().encode() + b"\n"
            digest.update(line)
            handle.write(line)
    return digest.hexdigest()


class _HashingReader:
    """Reads a file while hashing what was read."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _write_tar(path: Path, manifest: bytes, files: dict[str, str],
               sources: dict[str, Path]) -> None:
    now = int(datetime.now(UTC).timestamp())

    def info(name: str, size: int) -> tarfile.TarInfo:
        member = tarfile.TarInfo(f"{TOP}/{name}")
        member.size, member.mtime, member.mode = size, now, 0o644
        return member

    with path.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=now) \
                as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(info(MANIFEST, len(manifest)), io.BytesIO(manifest))
            for name, expected in files.items():
                with sources[name].open("rb") as handle:
                    reader = _HashingReader(handle)
                    tar.addfile(info(name, os.fstat(handle.fileno()).st_size), reader)
                if reader.digest.hexdigest() != expected:
                    raise BundleError(f"{name} changed while it was being exported; "
                                      "nothing was written")
        raw.flush()
        os.fsync(raw.fileno())


# ---------------------------------------------------------------- read and import


class BundleDeviceError(BundleError):
    """The bundle holds (or declares) records of a device other than the one expected."""


@dataclass
class LoadedBundle:
    """A checked bundle unpacked in ``folder`` (removed by `close` or leaving a `with`):
    its signer (named after the trusted key, when ``verified``) and the SHA-256 of its bytes."""

    manifest: Manifest
    batch: RecordBatch
    artifact_dirs: dict[str, Path]
    folder: Path
    scratch: Scratch | None = None
    signer: PublicKey | None = None
    verified: bool = False
    sha256: str = ""

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.close()

    def __enter__(self) -> LoadedBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def origin(self, what: str = "bundle") -> Origin:
        """Where its records come from, for the store's `record_origins`."""
        source = f"{what} {self.sha256}"
        if self.signer is None:
            return Origin(source)
        name = (self.signer.name or self.signer.fingerprint) if self.verified else None
        return Origin(source, self.signer.fingerprint, name, self.verified)

    def signer_text(self) -> str:
        """Who signed its records, in words."""
        if self.signer is None:
            return "not signed"
        if self.verified:
            return f"signed by {self.signer.describe()}, verified against --trust"
        return (f"signed by key {self.signer.fingerprint}, not verified (give --trust KEYS to "
                "check it is a key you trust)")


@dataclass
class ImportResult(IngestResult):
    """What `import_bundle` did, and who signed the records (see LoadedBundle)."""

    signer: str = "not signed"
    records: int = 0


class _Capped:
    """A binary reader that refuses to go past ``limit`` bytes (of the bundle as read), and
    hashes what it reads."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self.handle, self.limit, self.count = handle, limit, 0
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size if size >= 0 else self.limit + 1 - self.count)
        self.count += len(data)
        if self.count > self.limit:
            raise BundleError(f"the bundle is larger than the limit of {self.limit} bytes")
        self.digest.update(data)
        return data


class _TarStream:
    """The decompressed tar stream, refused past ``limits.stream_bytes`` (or a tighter `cap`),
    past ``limits.per_byte`` times the gzip'd bytes ``raw`` has read (plus UNPACK_FLOOR), and
    while a member header is read (see `header`), past HEADER_BYTES from where it began."""

    def __init__(self, handle: IO[bytes], limits: Limits, raw: _Capped) -> None:
        self.handle, self.limits, self.count, self.raw = handle, limits, 0, raw
        self.limit = limits.stream_bytes
        self.reason = f"the bundle unpacks to more than {limits.unpacked_bytes} bytes"
        self.header_end: int | None = None
        self.header()

    def cap(self, limit: int, reason: str) -> None:
        """Refuse the stream past ``limit`` bytes from its start, for ``reason``."""
        if limit < self.limit:
            self.limit, self.reason = limit, reason

    def header(self) -> None:
        """What is read next is a member's header(s); `tarfile` reads up to a record ahead."""
        self.header_end = self.count + HEADER_BYTES + tarfile.RECORDSIZE

    def data(self) -> None:
        """What is read next is member data (or the end of the archive)."""
        self.header_end = None

    def read(self, size: int = -1) -> bytes:
        end = self.limit
        if self.header_end is not None:
            end = min(end, self.header_end)
        room = end + 1 - self.count
        data = self.handle.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limits.per_byte * self.raw.count + UNPACK_FLOOR:
            raise BundleError(f"the bundle unpacks to more than {self.limits.per_byte} times "
                              "its compressed size (a decompression bomb?)")
        if self.count > end:
            if end == self.header_end:
                raise BundleError(f"a member header is larger than {HEADER_BYTES >> 10} KiB "
                                  "(pax or long-name data); bundles have short names")
            raise BundleError(self.reason)
        return data


Source = str | Path | bytes | IO[bytes]


@contextmanager
def _opened(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    elif isinstance(source, str | Path):
        if not Path(source).is_file():
            raise BundleError(f"no bundle file at {source}")
        with Path(source).open("rb") as handle:
            yield handle
    else:
        yield source


def read_bundle(source: Source, max_bytes: int = MAX_BUNDLE_BYTES, *,
                limits: Limits = Limits(), workdir: Path | None = None,
                trust: list[PublicKey] | None = None, device: str | None = None,
                min_version: int = 1) -> LoadedBundle:
    """Check the bundle at ``source`` (a path, bytes or a binary file object read to its end)
    and unpack it into a scratch folder in ``workdir`` (default: the system's temporary
    folder; stale ones of killed processes are removed first); BundleError names the first
    problem. ``trust``: accept only a bundle signed by one of these keys. ``device``: accept
    only records of this device (BundleDeviceError, checked on the manifest when it declares
    its devices, and on the records before any artifact is read). ``min_version``: refuse older
    manifests (a version 1 manifest declares no sizes or devices, so those checks cannot be
    made before its members are decompressed)."""
    scratch = Scratch(WORK_PREFIX, workdir)
    try:
        with _opened(source) as handle:
            raw = _Capped(handle, max_bytes)
            unpacker = _Unpacker(scratch.path, limits, trust, device, min_version)
            unpacker.unpack(raw)
        manifest = unpacker.manifest
        assert manifest is not None and unpacker.cells is not None
        batch = _batch(manifest, unpacker.cells, unpacker.measurements or [])
        return LoadedBundle(manifest, batch, _artifact_dirs(scratch.path, manifest), scratch.path,
                            scratch, unpacker.signer, unpacker.verified, raw.digest.hexdigest())
    except BaseException:
        scratch.close()
        raise


def import_bundle(store: ResultsStore | Path, source: Source, max_bytes: int = MAX_BUNDLE_BYTES,
                  trust: list[PublicKey] | None = None) -> ImportResult:
    """Check the whole bundle, then write its records and files in one store transaction.

    ``store`` may be a store's folder, opened (and created) only once the bundle has passed
    every check. ``trust``: import only a bundle signed by one of these keys. The write holds
    the store's "run" lock, as `bench run` does (both write artifact folders, so they must not
    interleave); UsageError if another process holds it."""
    with read_bundle(source, max_bytes, trust=trust) as loaded:
        target = store if isinstance(store, ResultsStore) else ResultsStore(store)
        with target.exclusive("run"):
            result = target.ingest(loaded.batch, loaded.artifact_dirs,
                                   loaded.origin("import of bundle"))
        return ImportResult(result.added, result.replaced, result.unchanged, result.stale,
                            loaded.signer_text(), len(loaded.batch))


def _next_member(tar: tarfile.TarFile, stream: _TarStream) -> tarfile.TarInfo | None:
    stream.header()
    member = tar.next()
    stream.data()
    return member


class _Unpacker:
    """Checks each member of the tar stream (its header before its data) and writes it into
    ``folder``; keeps the manifest, the records and who signed them."""

    def __init__(self, folder: Path, limits: Limits, trust: list[PublicKey] | None,
                 device: str | None, min_version: int = 1) -> None:
        self.folder, self.limits, self.trust, self.device = folder, limits, trust, device
        self.min_version = min_version
        self.manifest: Manifest | None = None
        self.cells: dict[str, CellData] | None = None
        self.measurements: list[MeasurementData] | None = None
        self.signer: PublicKey | None = None
        self.verified = False
        self.seen: set[str] = set()
        self.unpacked = self.count = 0

    def unpack(self, raw: _Capped) -> None:
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                self.stream = _TarStream(gz, self.limits, raw)
                with tarfile.open(fileobj=self.stream, mode="r|") as tar:  # type: ignore[call-overload]
                    while (member := _next_member(tar, self.stream)) is not None:
                        self._member(tar, member)
                    # what tarfile read past the end-of-archive block and holds unparsed
                    _only_padding(getattr(tar.fileobj, "buf", b""))
                self.stream.cap(self.stream.count + STREAM_SLACK,
                                "the bundle has data after the end of its archive (an unlisted "
                                "trailer)")
                while chunk := self.stream.read(CHUNK):
                    _only_padding(chunk)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise BundleError(f"the bundle is truncated or corrupt ({err})") from err
        if self.manifest is None:
            raise BundleError(f"the bundle has no {TOP}/{MANIFEST}")
        missing = sorted(self.manifest.files.keys() - self.seen)
        if missing:
            raise BundleError(f"{len(missing)} file(s) the manifest lists are missing from the "
                              f"bundle: {', '.join(missing[:5])}")

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.limits.members:
            raise BundleError(f"the bundle has more than {self.limits.members} members")
        name = _member_name(member)
        if name is None:
            return
        self._check_header(name, member)
        tarfile.data_filter(member, str(self.folder))
        content = tar.extractfile(member)
        if content is None:
            raise BundleError(f"{name} cannot be read from the bundle")
        self.seen.add(name)
        if name == MANIFEST:
            self._take_manifest(content.read(MAX_MANIFEST_BYTES + 1))
            return
        assert self.manifest is not None
        if _copy(content, self.folder / name) != self.manifest.files[name]:
            raise BundleError(f"{name} does not match its SHA-256 in the manifest "
                              "(the bundle was changed or is corrupt)")
        if name == CELLS:
            cells = _lines(self.folder / CELLS, CELLS, CellData)
            self._check_devices(cells)
            self.cells = {cell.cell_id: cell for cell in cells}
            if len(self.cells) != len(cells):
                raise BundleError("a cell appears twice in the bundle's records")
        elif name == MEASUREMENTS:
            self.measurements = _lines(self.folder / MEASUREMENTS, MEASUREMENTS,
                                       MeasurementData)
            self._check_devices(self.measurements)

    def _check_header(self, name: str, member: tarfile.TarInfo) -> None:
        """Everything that can be refused before the member's data is decompressed."""
        manifest = self.manifest
        if name in self.seen:
            raise BundleError(f"{name} appears twice in the bundle")
        if manifest is None and name != MANIFEST:
            raise BundleError(f"{name} comes before {MANIFEST}, which must be first")
        if manifest is not None and name not in manifest.files:
            raise BundleError(f"{name} is not listed in the bundle's manifest")
        if member.size > _member_limit(name, self.limits):
            raise BundleError(f"{name} is larger than the limit of "
                              f"{_member_limit(name, self.limits)} bytes")
        if manifest is not None and manifest.sizes is not None \
                and member.size != manifest.sizes[name]:
            raise BundleError(f"{name} is {member.size} bytes in the bundle; its manifest "
                              f"declares {manifest.sizes[name]}")
        self.unpacked += member.size
        if self.unpacked > self.limits.unpacked_bytes:
            raise BundleError(f"the bundle unpacks to more than {self.limits.unpacked_bytes} "
                              "bytes")
        if name.startswith("artifacts/"):
            self._check_artifact(name)

    def _check_artifact(self, name: str) -> None:
        """An artifact must be a file its cell's record lists with the manifest's hash."""
        assert self.manifest is not None
        if self.cells is None or self.measurements is None:
            raise BundleError(f"{name} comes before the records, which must come first")
        cell_id, _, path = name.removeprefix("artifacts/").partition("/")
        if cell_id not in self.cells:
            raise BundleError(f"{name}: the bundle has no record of cell {cell_id}")
        if self.cells[cell_id].artifact_hashes.get(path) != self.manifest.files[name]:
            raise BundleError(f"{name} is not a file that cell {cell_id}'s record lists "
                              "(artifact_hashes)")

    def _take_manifest(self, raw: bytes) -> None:
        manifest = parse_manifest(raw)
        if manifest.version < self.min_version:
            raise BundleError(f"bundle version {manifest.version} declares neither the sizes "
                              "nor the devices of its members, so it cannot be checked before "
                              f"it is unpacked; only version {self.min_version} or later is "
                              "accepted here (export it again with this medq-bench)")
        self.signer, self.verified = check_trust(manifest, self.trust)
        if manifest.devices is not None:
            self._check_device_names(set(manifest.devices), "declares")
        declared = manifest.declared_bytes()
        if declared is not None:
            self.stream.cap(self.stream.count + declared + len(manifest.files) * MEMBER_OVERHEAD
                            + STREAM_SLACK, "the bundle unpacks to more than its manifest "
                            f"declares ({declared} bytes of members)")
        self.manifest = manifest

    def _check_devices(self, records: list[CellData] | list[MeasurementData]) -> None:
        devices = {r.device for r in records}
        assert self.manifest is not None
        if self.manifest.devices is not None:
            undeclared = sorted(devices - set(self.manifest.devices))
            if undeclared:
                raise BundleError(f"the bundle has records of {', '.join(undeclared)}, which "
                                  "its manifest does not declare")
        self._check_device_names(devices, "has records of")

    def _check_device_names(self, devices: set[str], verb: str) -> None:
        others = sorted(devices - {self.device}) if self.device is not None else []
        if others:
            raise BundleDeviceError(f"this token writes records of device {self.device!r} "
                                    f"only; the bundle {verb} "
                                    f"{', '.join(map(repr, others[:5]))}")


def _only_padding(data: bytes) -> None:
    """Refuse anything but tar's zero padding after the end of the archive."""
    if data.count(0) != len(data):
        raise BundleError("the bundle has data after the end of its archive (only tar's zero "
                          "padding may follow it)")


def _member_limit(name: str, limits: Limits) -> int:
    if name == MANIFEST:
        return min(limits.member_bytes, MAX_MANIFEST_BYTES)
    if name in (CELLS, MEASUREMENTS):
        return min(limits.member_bytes, limits.records_bytes)
    return limits.member_bytes


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The member's path under the top folder (None for a folder); refuses anything else."""
    name = member.name
    parts = name.rstrip("/").split("/") if member.isdir() else name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"unsafe member name {name!r} (absolute, '..' or empty parts)")
    if parts[0] != TOP:
        raise BundleError(f"member {name!r} is outside {TOP}/")
    if member.isdir():
        return None
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = _SPECIAL.get(member.type, "special member")
        raise BundleError(f"member {name!r} is a {kind}; bundles hold plain files only")
    if len(parts) == 1:
        raise BundleError(f"member {name!r} must be a folder")
    return "/".join(parts[1:])


def _copy(content: IO[bytes], target: Path) -> str:
    digest = hashlib.sha256()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as handle:
            while chunk := content.read(CHUNK):
                digest.update(chunk)
                handle.write(chunk)
    except (FileExistsError, NotADirectoryError) as err:
        raise BundleError(f"member {target.name} clashes with another member's path") from err
    return digest.hexdigest()


R = TypeVar("R", CellData, MeasurementData)


def _lines(path: Path, name: str, model: type[R]) -> list[R]:
    """The records of a JSON-lines file, read a line at a time."""
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                records.append(model.model_validate_json(line, context=RECEIVED))
            except ValidationError as err:
                raise BundleError(f"{name} line {number}: {first_error(err)}") from err
    return records


def _batch(manifest: Manifest, cells: dict[str, CellData], measurements: list[MeasurementData]
           ) -> RecordBatch:
    if (len(cells), len(measurements)) != (manifest.counts.cells, manifest.counts.measurements):
        raise BundleError(f"the manifest counts {manifest.counts.cells} cells and "
                          f"{manifest.counts.measurements} measurements; the records hold "
                          f"{len(cells)} and {len(measurements)}")
    keys = [m.key() for m in measurements]
    if len(set(keys)) != len(keys):
        raise BundleError("a measurement appears twice in the bundle's records")
    batch = RecordBatch(cells=list(cells.values()), measurements=measurements)
    try:
        check_times(batch)
        check_received(measurements)
    except ValueError as err:
        raise BundleError(str(err)) from err
    return batch


def _artifact_dirs(folder: Path, manifest: Manifest) -> dict[str, Path]:
    """The folder of each cell's artifact files in the bundle (each checked as it was read)."""
    return {cell_id: folder / "artifacts" / cell_id for cell_id in sorted(
        name.split("/")[1] for name in manifest.files if name.startswith("artifacts/"))}
