"""Cells on Ray workers that share no disk with the driver: what travels through the object store.

Driver to worker (`Shipper`): the records a cell may read from the store (its FP32 parent, and
the FP32 cells of the same data, backbone and seed that its saliency stage may compare with),
each of their artifact files put once in the object store, in chunks; and the prepared data
set, put once per data set, which a worker uses only when it cannot prepare the data itself
(its view of `--data-root` lacks the data). A worker keeps its own `$MEDQ_CACHE`.

Worker to driver (`stream_cell`): the task is a streaming generator. It yields where it runs,
then the record with the SHA-256 and size of each artifact file it computed in node-local
scratch space, then the files in chunks. What a streaming task yields is owned by the driver
and freed once the driver has written it down, so artifacts larger than the object store
travel too. The driver (`Incoming`) writes the chunks into its store's staging folder and
checks every file's SHA-256 on arrival; a cell whose files arrive damaged comes back as
crashed, which the driver retries like a dead worker's. Only the driver writes the store.

This module imports without torch and Ray; Ray is imported where objects are put or fetched.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.runner.executors.base import Finished
from bench.runner.outcome import CellOutcome
from bench.store.artifacts import checked_artifact, file_sha256, hash_tree, staging_folder
from methods.base import FP32

if TYPE_CHECKING:
    from bench.data import PreparedData
    from bench.runner.executors.task import CellTask
    from bench.store import CellRecord, ResultsStore

CHUNK_BYTES = 16 << 20
"""Files travel in chunks of this size, so neither side holds a whole file in the store."""

class ArtifactDamaged(RuntimeError):
    """A file arrived with another SHA-256 (or size) than its sender computed."""


@dataclass(frozen=True)
class Blob:
    """A file in the object store: its SHA-256, its size and the refs of its chunks."""

    sha256: str
    size: int
    chunks: tuple[Any, ...]


@dataclass(frozen=True)
class Shipment:
    """What a worker gets with a cell besides the task: the records it may read, their files
    in the object store, and the prepared data set's ref (in a tuple, so Ray hands the ref
    itself to the task instead of resolving it)."""

    records: tuple[CellRecord, ...] = ()
    files: dict[str, dict[str, Blob]] = field(default_factory=dict)
    data: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Node:
    """Where a task runs: Ray's node id, its IP and the host's name."""

    node_id: str
    ip: str
    hostname: str

    def __str__(self) -> str:
        return f"{self.hostname} ({self.ip}, Ray node {self.node_id[:12]})"


@dataclass(frozen=True)
class Header:
    """A computed cell's record and the SHA-256 and size of each of its artifact files."""

    record: CellRecord
    files: dict[str, tuple[str, int]]


def put_file(path: Path) -> Blob:
    import ray

    chunks = []
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            chunks.append(ray.put(chunk))
    return Blob(file_sha256(path), path.stat().st_size, tuple(chunks))


def fetch_file(blob: Blob, target: Path) -> None:
    """Write ``blob`` to ``target``; ArtifactDamaged if it does not match its SHA-256."""
    import ray

    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        for ref in blob.chunks:
            handle.write(ray.get(ref))
    if target.stat().st_size != blob.size or file_sha256(target) != blob.sha256:
        raise ArtifactDamaged(f"{target.name} arrived with another SHA-256 than it was sent with")


def _reads(store: ResultsStore, task: CellTask) -> list[CellRecord]:
    """The stored records a cell may read: its parent, and the ok FP32 cells of the same data,
    split, backbone and seed (the saliency stage's same-seed reference is one of them)."""
    cfg = task.cell.config
    found = []
    if cfg.parent_id:
        parent = store.get(cfg.parent_id)
        if parent is not None:
            found.append(parent)
    else:
        found.extend(r for r in store.records()
                     if r.status == "ok" and r.method == FP32 and not r.parent_id
                     and r.dataset == cfg.dataset.name and r.backbone == cfg.backbone.name
                     and r.seed == cfg.seed and r.split_manifest == cfg.split_manifest)
    return found


class Shipper:
    """Driver side: puts each dependency's files and each data set in the object store once."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self._files: dict[str, dict[str, Blob]] = {}
        self._data: dict[str, Any] = {}

    def shipment(self, task: CellTask, data: PreparedData) -> Shipment:
        import ray

        records = _reads(self.store, task)
        for record in records:
            if record.cell_id not in self._files:
                folder = self.store.artifact_dir(record.cell_id)
                self._files[record.cell_id] = {
                    name: put_file(folder / name) for name in sorted(record.artifact_hashes or {})
                    if (folder / name).is_file()}
        key = task.cell.data_key
        if key not in self._data:
            self._data[key] = ray.put(data)
        return Shipment(tuple(records), {r.cell_id: self._files[r.cell_id] for r in records},
                        (self._data[key],))


class ShippedStore:
    """The store as a worker that shares no disk with the driver reads it: the shipped records,
    their files fetched into node-local scratch on first use (each checked against its
    SHA-256), and staging folders in scratch. It offers what a cell reads (`get`, `records`,
    `artifact_dir`, `checked_file`) and `staging`; nothing is written back but through the
    driver."""

    def __init__(self, scratch: Path, shipment: Shipment) -> None:
        self.root = scratch
        self.staging_root = scratch / "staging"
        self.staging_root.mkdir(parents=True, exist_ok=True)
        self._shipment = shipment
        self._records = {r.cell_id: r for r in shipment.records}
        self._fetched: set[str] = set()
        self.arrived_damaged: ArtifactDamaged | None = None
        """The first file that arrived damaged: the cell that read it cannot be trusted, its
        task re-raises this (run_task) so the driver retries it as a crash."""

    def get(self, cell_id: str) -> CellRecord | None:
        return self._records.get(cell_id)

    def records(self) -> list[CellRecord]:
        return list(self._records.values())

    def artifact_dir(self, cell_id: str) -> Path:
        folder = self.root / "artifacts" / cell_id
        if cell_id not in self._fetched:
            for name, blob in self._shipment.files.get(cell_id, {}).items():
                try:
                    fetch_file(blob, folder / name)
                except ArtifactDamaged as err:
                    self.arrived_damaged = self.arrived_damaged or err
                    raise
            self._fetched.add(cell_id)
        return folder

    def checked_file(self, record: CellRecord, name: str) -> Path:
        """As ResultsStore.checked_file: the fetched file, once it has the record's SHA-256."""
        return checked_artifact(self.artifact_dir(record.cell_id), record.cell_id,
                                record.artifact_hashes, name)

    def staging(self, cell_id: str) -> AbstractContextManager[Path]:
        return staging_folder(self.staging_root, cell_id)


def this_node() -> Node:
    import ray

    context = ray.get_runtime_context()
    ip = ray.util.get_node_ip_address()
    return Node(context.get_node_id(), ip, platform.node())


def stream_cell(task: CellTask, shipment: Shipment) -> Iterator[Any]:
    """Worker side (a Ray streaming generator): compute the cell in node-local scratch space and
    yield where it ran, its `Header`, then ``(name, chunk)`` for each artifact file."""
    from bench.runner.executors.task import run_task

    node = this_node()
    yield node
    scratch = Path(tempfile.mkdtemp(prefix=f"medq-{task.cell.cell_id}-"))
    try:
        outcome = run_task(task, store=ShippedStore(scratch, shipment),
                           shipped_data=shipment.data, node=str(node))
        yield from stream_files(outcome.record, outcome.staged)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stream_files(record: CellRecord, folder: Path | None) -> Iterator[Any]:
    """Yield the `Header` of ``record`` with its files under ``folder``, then the files as
    ``(name, chunk)``."""
    files = hash_tree(folder) if folder is not None else {}
    sizes = {name: (sha, (folder / name).stat().st_size) for name, sha in files.items()
             } if folder is not None else {}
    yield Header(record, sizes)
    for name in sizes:
        with (folder / name).open("rb") as handle:   # type: ignore[operator]
            while chunk := handle.read(CHUNK_BYTES):
                yield name, chunk


class Incoming:
    """Driver side: one streaming cell's items as they arrive, written into the store's staging
    folder; `finish` checks every file against the SHA-256 its worker computed."""

    def __init__(self, cell_id: str, staging_root: Path) -> None:
        self.cell_id = cell_id
        self.node: Node | None = None
        self.header: Header | None = None
        self.folder = staging_root / f"{cell_id}-{uuid.uuid4().hex[:8]}"

    @property
    def where(self) -> str:
        return f"on {self.node}" if self.node is not None else "its node not reported yet"

    def take(self, item: Any) -> None:
        if isinstance(item, Node):
            self.node = item
        elif isinstance(item, Header):
            self.header = item
            self.folder.mkdir(parents=True, exist_ok=True)
        else:
            name, chunk = item
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("ab") as handle:
                handle.write(chunk)

    def crashed(self, why: str) -> Finished:
        self.discard()
        return Finished(self.cell_id, crash=f"{why} ({self.where})", node=self._node_name)

    @property
    def _node_name(self) -> str | None:
        return str(self.node) if self.node is not None else None

    def finish(self) -> Finished:
        if self.header is None:
            return self.crashed("the task ended without handing back its record")
        damaged = [name for name, (sha, size) in sorted(self.header.files.items())
                   if not (self.folder / name).is_file()
                   or (self.folder / name).stat().st_size != size
                   or file_sha256(self.folder / name) != sha]
        if damaged:
            return self.crashed(f"ArtifactDamaged: {', '.join(damaged)} arrived with another "
                                "SHA-256 than the worker computed")
        staged = self.folder if self.header.files else None
        if staged is None:
            self.discard()
        return Finished(self.cell_id, CellOutcome(self.header.record, staged),
                        node=self._node_name)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
