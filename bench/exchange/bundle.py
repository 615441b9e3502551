"""Offline bundles: a store's records, and chosen artifact files, in one gzip'd tar.

Members, all under the top folder `medq-bundle/`, in this order: `manifest.json` (format,
version, source, filters, counts, the SHA-256 of every other member, and a digest of itself),
`records/cells.jsonl` and `records/measurements.jsonl` (one CellData / MeasurementData JSON a
line), then `artifacts/<cell_id>/<path>` files, each equal to its cell's recorded artifact hash.

`read_bundle` streams a bundle into a temporary folder and refuses it, with one `BundleError`,
at the first thing wrong: a truncated or corrupt gzip stream, a member that is not a plain file
under the top folder, a name the manifest does not list (or a listed one missing), any hash
that does not match, an edited manifest, records that do not validate, more bytes or members
than the limits. Only a bundle that passes every check reaches `import_bundle`, which writes
its records and files in one store transaction.

Memory stays bounded whatever the bundle holds: the decompressed tar stream is counted as it is
read, so a member header (pax or GNU long-name data, which `tarfile` reads whole) larger than
HEADER_BYTES, or a stream longer than its members may take, is refused before it is read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
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
    first_error,
    parse_manifest,
    seal,
)
from bench.store.artifacts import file_sha256
from bench.store.database import ResultsStore, StoreBusyError
from bench.store.deploy import deploy_files
from bench.store.identity import local_device
from bench.store.query import RecordFilter
from bench.store.records import CellData, IngestResult, MeasurementData, RecordBatch

__all__ = ["ARTIFACT_MODES", "BUNDLE_CONTENT_TYPE", "CELLS", "JSON_CONTENT_TYPE", "MANIFEST",
           "MEASUREMENTS", "TOP", "ArtifactMode", "BundleError", "ExportSummary", "Limits",
           "LoadedBundle", "Manifest", "export_bundle", "import_bundle", "read_bundle", "seal"]

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

    @property
    def stream_bytes(self) -> int:
        """The most the decompressed tar stream may hold."""
        return self.unpacked_bytes + self.members * MEMBER_OVERHEAD + STREAM_SLACK


# ---------------------------------------------------------------- export


@dataclass
class ExportSummary:
    """What `export_bundle` wrote; `skipped` names artifact files left out because the store
    lacks them or they differ from their recorded hash."""

    path: Path
    cells: int
    measurements: int
    files: int
    size_bytes: int
    sha256: str
    skipped: list[str] = field(default_factory=list)


def _chosen_files(cell: CellData, mode: ArtifactMode) -> list[str]:
    if mode == "all":
        return sorted(cell.artifact_hashes)
    return deploy_files(cell) if mode == "deploy" else []


def export_bundle(store: ResultsStore, out: str | Path, record_filter: RecordFilter | None = None,
                  artifacts: ArtifactMode = "none") -> ExportSummary:
    """Write the records ``record_filter`` selects (and their ``artifacts`` files) to the
    bundle ``out``, atomically: a temporary file renamed into place. Reads the store only."""
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
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = {CELLS: _write_lines(work / "cells.jsonl", cells),
                 MEASUREMENTS: _write_lines(work / "measurements.jsonl", measurements)}
        sources = {CELLS: work / "cells.jsonl", MEASUREMENTS: work / "measurements.jsonl"}
        skipped = _add_artifacts(store.root, cells, folders, artifacts, files, sources)
        manifest = seal({
            "format": FORMAT, "version": VERSION,
            "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "source": {"device": device, "store": str(store.root.resolve())},
            "filters": record_filter.model_dump(mode="json"),
            "counts": {"cells": len(cells), "measurements": len(measurements)},
            "files": files})
        partial = work / "bundle.tar.gz"
        _write_tar(partial, manifest, files, sources)
        size, digest = partial.stat().st_size, file_sha256(partial)
        partial.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportSummary(out, len(cells), len(measurements), len(files) - 2, size, digest,
                         skipped)


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


@dataclass
class LoadedBundle:
    """A checked bundle unpacked in ``folder`` (removed by `close` or leaving a `with`)."""

    manifest: Manifest
    batch: RecordBatch
    artifact_dirs: dict[str, Path]
    folder: Path

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LoadedBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Capped:
    """A binary reader that refuses to go past ``limit`` bytes (of the bundle as read)."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self.handle, self.limit, self.count = handle, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size if size >= 0 else self.limit + 1 - self.count)
        self.count += len(data)
        if self.count > self.limit:
            raise BundleError(f"the bundle is larger than the limit of {self.limit} bytes")
        return data


class _TarStream:
    """The decompressed tar stream, refused past ``limits.stream_bytes``, and while a member
    header is read (see `header`), past HEADER_BYTES from where it began."""

    def __init__(self, handle: IO[bytes], limits: Limits) -> None:
        self.handle, self.limits, self.count = handle, limits, 0
        self.header_end: int | None = None
        self.header()

    def header(self) -> None:
        """What is read next is a member's header(s); `tarfile` reads up to a record ahead."""
        self.header_end = self.count + HEADER_BYTES + tarfile.RECORDSIZE

    def data(self) -> None:
        """What is read next is member data (or the end of the archive)."""
        self.header_end = None

    def read(self, size: int = -1) -> bytes:
        end = self.limits.stream_bytes
        if self.header_end is not None:
            end = min(end, self.header_end)
        room = end + 1 - self.count
        data = self.handle.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > end:
            if end == self.header_end:
                raise BundleError(f"a member header is larger than {HEADER_BYTES >> 10} KiB "
                                  "(pax or long-name data); bundles have short names")
            raise BundleError(f"the bundle unpacks to more than {self.limits.unpacked_bytes} "
                              "bytes")
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
                limits: Limits = Limits(), workdir: Path | None = None) -> LoadedBundle:
    """Check the bundle at ``source`` (a path, bytes or a binary file object read to its end)
    and unpack it into a temporary folder; BundleError names the first problem."""
    folder = Path(tempfile.mkdtemp(prefix="medq-bundle-", dir=workdir))
    try:
        with _opened(source) as handle:
            manifest = _unpack(_Capped(handle, max_bytes), folder, limits)
        batch = _batch(folder, manifest)
        return LoadedBundle(manifest, batch, _artifact_dirs(folder, manifest, batch), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def import_bundle(store: ResultsStore | Path, source: Source, max_bytes: int = MAX_BUNDLE_BYTES
                  ) -> IngestResult:
    """Check the whole bundle, then write its records and files in one store transaction.

    ``store`` may be a store's folder, opened (and created) only once the bundle has passed
    every check. The write holds the store's "run" lock, as `bench run` does (both write
    artifact folders, so they must not interleave); UsageError if another process holds it."""
    with read_bundle(source, max_bytes) as loaded:
        target = store if isinstance(store, ResultsStore) else ResultsStore(store)
        try:
            with target.exclusive("run"):
                return target.ingest(loaded.batch, loaded.artifact_dirs)
        except StoreBusyError as err:
            raise UsageError(str(err)) from err


def _next_member(tar: tarfile.TarFile, stream: _TarStream) -> tarfile.TarInfo | None:
    stream.header()
    member = tar.next()
    stream.data()
    return member


def _unpack(raw: _Capped, folder: Path, limits: Limits) -> Manifest:
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            stream = _TarStream(gz, limits)
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                manifest, seen = _extract(tar, stream, folder, limits)
            while stream.read(CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise BundleError(f"the bundle is truncated or corrupt ({err})") from err
    if manifest is None:
        raise BundleError(f"the bundle has no {TOP}/{MANIFEST}")
    missing = sorted(manifest.files.keys() - seen)
    if missing:
        raise BundleError(f"{len(missing)} file(s) the manifest lists are missing from the "
                          f"bundle: {', '.join(missing[:5])}")
    return manifest


def _extract(tar: tarfile.TarFile, stream: _TarStream, folder: Path, limits: Limits
             ) -> tuple[Manifest | None, set[str]]:
    """Check and write each member into ``folder``; the manifest and the names written."""
    manifest: Manifest | None = None
    seen: set[str] = set()
    unpacked = count = 0
    while (member := _next_member(tar, stream)) is not None:
        count += 1
        if count > limits.members:
            raise BundleError(f"the bundle has more than {limits.members} members")
        name = _member_name(member)
        if name is None:
            continue
        if name in seen:
            raise BundleError(f"{name} appears twice in the bundle")
        if manifest is None and name != MANIFEST:
            raise BundleError(f"{name} comes before {MANIFEST}, which must be first")
        if manifest is not None and name not in manifest.files:
            raise BundleError(f"{name} is not listed in the bundle's manifest")
        if member.size > _member_limit(name, limits):
            raise BundleError(f"{name} is larger than the limit of "
                              f"{_member_limit(name, limits)} bytes")
        unpacked += member.size
        if unpacked > limits.unpacked_bytes:
            raise BundleError(f"the bundle unpacks to more than {limits.unpacked_bytes} bytes")
        tarfile.data_filter(member, str(folder))
        content = tar.extractfile(member)
        if content is None:
            raise BundleError(f"{name} cannot be read from the bundle")
        seen.add(name)
        if name == MANIFEST:
            manifest = parse_manifest(content.read(MAX_MANIFEST_BYTES + 1))
        elif _copy(content, folder / name) != manifest.files[name]:
            raise BundleError(f"{name} does not match its SHA-256 in the manifest "
                              "(the bundle was changed or is corrupt)")
    return manifest, seen


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
                records.append(model.model_validate_json(line))
            except ValidationError as err:
                raise BundleError(f"{name} line {number}: {first_error(err)}") from err
    return records


def _batch(folder: Path, manifest: Manifest) -> RecordBatch:
    cells = _lines(folder / CELLS, CELLS, CellData)
    measurements = _lines(folder / MEASUREMENTS, MEASUREMENTS, MeasurementData)
    if (len(cells), len(measurements)) != (manifest.counts.cells, manifest.counts.measurements):
        raise BundleError(f"the manifest counts {manifest.counts.cells} cells and "
                          f"{manifest.counts.measurements} measurements; the records hold "
                          f"{len(cells)} and {len(measurements)}")
    for label, keys in (("cell", [c.cell_id for c in cells]),
                        ("measurement", [m.key() for m in measurements])):
        if len(set(keys)) != len(keys):
            raise BundleError(f"a {label} appears twice in the bundle's records")
    return RecordBatch(cells=cells, measurements=measurements)


def _artifact_dirs(folder: Path, manifest: Manifest, batch: RecordBatch) -> dict[str, Path]:
    cells = {cell.cell_id: cell for cell in batch.cells}
    dirs = {}
    for name, sha in manifest.files.items():
        match = re.fullmatch(r"artifacts/([^/]+)/(.+)", name)
        if match is None:
            continue
        cell_id, path = match.groups()
        if cell_id not in cells:
            raise BundleError(f"{name}: the bundle has no record of cell {cell_id}")
        if cells[cell_id].artifact_hashes.get(path) != sha:
            raise BundleError(f"{name} is not a file that cell {cell_id}'s record lists "
                              "(artifact_hashes)")
        dirs[cell_id] = folder / "artifacts" / cell_id
    return dirs
