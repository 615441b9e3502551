"""`bench device pull`: bring deployable cells (records plus their ONNX files) to a device.

From a results server or an exported bundle, take the successful cells the filter selects that
have deploy artifacts (and, unless ``inputs=False``, their test inputs for accuracy mode),
check every file against the SHA-256 its cell recorded, and only then
write the cells and files into the local store in one transaction. Files from a server are
streamed to disk and refused past the size their cell records; a cell whose files the server
lacks is skipped, the others are pulled. A server's records are validated before anything is
downloaded, and the store is opened (created) only once everything has passed. A device needs
no training stack for any of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from bench.errors import UsageError
from bench.exchange.bundle import MAX_MEMBER_BYTES, read_bundle
from bench.exchange.client import API, RequestRefused, ServerClient
from bench.exchange.manifest import first_error
from bench.exchange.scratch import Scratch
from bench.store.artifacts import file_sha256
from bench.store.database import ResultsStore
from bench.store.deploy import deploy_files, recorded_sizes
from bench.store.query import RecordFilter
from bench.store.records import CellData, FutureRecordError, IngestResult, Origin, RecordBatch

NOT_FOUND = 404
UNRECORDED_MAX_BYTES = MAX_MEMBER_BYTES
"""The most a deploy file whose size its cell does not record may take (as in a bundle)."""


@dataclass
class PullSummary:
    """Cells taken, files checked, what the store did, and cells skipped (with why)."""

    source: str
    cells: int = 0
    files: int = 0
    result: IngestResult = field(default_factory=IngestResult)
    skipped: list[str] = field(default_factory=list)
    cells_from: str = "any device"
    """Whose cells were taken, in words."""


def _stage(cell: CellData, source: Path, work: Path, inputs: bool) -> Path:
    """Copy the cell's deploy files from ``source`` into a fresh folder, checking each hash."""
    folder = work / cell.cell_id
    folder.mkdir(parents=True, exist_ok=True)
    for name in deploy_files(cell, inputs):
        path = source / name
        if not path.is_file():
            raise UsageError(f"cell {cell.cell_id}: {name} is missing from the source")
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        _check(cell, name, file_sha256(target))
    return folder


def _check(cell: CellData, name: str, sha256: str) -> None:
    if sha256 != cell.artifact_hashes[name]:
        raise UsageError(f"cell {cell.cell_id}: {name} differs from the SHA-256 its cell "
                         "recorded; nothing was pulled")


def pull(store: ResultsStore | Path, source: str, selection: RecordFilter,
         token: str | None = None, server: ServerClient | None = None,
         cells_from: list[str] | None = None, inputs: bool = True) -> PullSummary:
    """Pull from ``source``: an `http(s)://` server URL (or ``server``) or a bundle file;
    ``inputs=False`` leaves the cells' test inputs behind (the device can then only time).

    ``cells_from``: take only cells these devices made. Cell ids follow from the grid, so any
    device can upload a record under another's cell id first; from a server the default is
    therefore the devices whose public keys it has registered (every device only where none
    has one), from a bundle every device in it. ``store`` may be a store's folder, opened (and
    created) only once the pull has passed every check. Writes under the store's "run" lock,
    as `bench run` does (both write artifact folders); UsageError if another process holds
    it."""
    if source.startswith(("http://", "https://")) or server is not None:
        return _from_server(store, source, selection,
                            server or ServerClient.connect(source, token), cells_from, inputs)
    if not Path(source).is_file():
        raise UsageError(f"--from {source}: neither a server URL (http://, https://) "
                         "nor a bundle file")
    return _from_bundle(store, Path(source), selection, cells_from, inputs)


def _trusted(server: ServerClient, cells_from: list[str] | None) -> tuple[list[str] | None,
                                                                          str]:
    """The devices whose cells to take (None: any) and that choice in words."""
    if cells_from:
        return cells_from, ", ".join(cells_from) + " (--cells-from)"
    devices = server.devices()
    keyed = sorted(str(d.get("name")) for d in devices
                   if isinstance(d, dict) and d.get("keys"))
    if keyed:
        return keyed, ", ".join(keyed) + " (the devices with registered keys)"
    return None, "any device (none has a registered key; --cells-from chooses)"


def _ingest(store: ResultsStore | Path, summary: PullSummary, cells: list[CellData],
            folders: dict[str, Path], origin: Origin, inputs: bool) -> PullSummary:
    summary.cells = len(cells)
    summary.files = sum(len(deploy_files(c, inputs)) for c in cells)
    target = store if isinstance(store, ResultsStore) else ResultsStore(store)
    try:
        with target.exclusive("run"):
            summary.result = target.ingest(RecordBatch(cells=cells), folders, origin)
    except FutureRecordError as err:
        raise UsageError(f"{summary.source}: {err}; nothing was pulled") from err
    return summary


def _deployable(candidates: list[CellData], selection: RecordFilter,
                summary: PullSummary, devices: list[str] | None = None) -> list[CellData]:
    chosen = []
    for cell in candidates:
        if cell.status != "ok" or not selection.matches(cell):
            continue
        if devices is not None and cell.device not in devices:
            summary.skipped.append(f"{cell.cell_id}: made by {cell.device}, not by "
                                   f"{summary.cells_from}")
            continue
        if deploy_files(cell):
            chosen.append(cell)
        else:
            summary.skipped.append(f"{cell.cell_id}: no deployed model")
    if not chosen:
        raise UsageError("no deployable cell matches: pull needs successful cells that ran the "
                         "deploy stage (`stages: {deploy: {}}` in the grid), made by "
                         f"{summary.cells_from}")
    return chosen


def _from_bundle(store: ResultsStore | Path, path: Path, selection: RecordFilter,
                 cells_from: list[str] | None, inputs: bool) -> PullSummary:
    summary = PullSummary(str(path))
    if cells_from:
        summary.cells_from = ", ".join(cells_from) + " (--cells-from)"
    with read_bundle(path) as bundle, Scratch("medq-pull-") as tmp:
        cells = _deployable(bundle.batch.cells, selection, summary, cells_from or None)
        folders = {}
        for cell in cells:
            source = bundle.artifact_dirs.get(cell.cell_id)
            if source is None:
                raise UsageError(f"{path}: cell {cell.cell_id} has no artifact files in the "
                                 "bundle; export it with --artifacts deploy")
            folders[cell.cell_id] = _stage(cell, source, Path(tmp), inputs)
        return _ingest(store, summary, cells, folders, bundle.origin("pull of bundle"), inputs)


def _download(server: ServerClient, cell: CellData, folder: Path, inputs: bool) -> None:
    """Stream the cell's deploy files into ``folder``, each refused past the size its cell
    records (UNRECORDED_MAX_BYTES where it records none), checking each hash."""
    sizes = recorded_sizes(cell)
    for name in deploy_files(cell, inputs):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        path = f"{API}/cells/{quote(cell.cell_id)}/artifacts/{quote(name)}"
        _check(cell, name, server.download(path, target,
                                           sizes.get(name, UNRECORDED_MAX_BYTES)))


def _server_cells(items: Iterable[Any], url: str) -> list[CellData]:
    """The server's cell records, validated; UsageError naming the first invalid one."""
    cells = []
    for number, item in enumerate(items, 1):
        try:
            if not isinstance(item, dict):
                raise TypeError("not a JSON object")
            cells.append(CellData.from_api(item))
        except (ValidationError, TypeError) as err:
            name = item.get("cell_id") if isinstance(item, dict) else None
            reason = first_error(err) if isinstance(err, ValidationError) else str(err)
            raise UsageError(f"{url}: record {number} (cell {str(name)[:40]!r}) is invalid: "
                             f"{reason}; nothing was pulled") from err
    return cells


def _from_server(store: ResultsStore | Path, url: str, selection: RecordFilter,
                 server: ServerClient, cells_from: list[str] | None, inputs: bool
                 ) -> PullSummary:
    summary = PullSummary(url)
    devices, summary.cells_from = _trusted(server, cells_from)
    params = {"dataset": selection.datasets, "backbone": selection.backbones,
              "method": selection.methods, "w_bits": selection.w_bits,
              "a_bits": selection.a_bits, "status": ["ok"], "device": devices}
    params = {key: values for key, values in params.items() if values}
    candidates = _server_cells(server.records("cell", params), url)
    cells = []
    with Scratch("medq-pull-") as tmp:
        folders = {}
        for cell in _deployable(candidates, selection, summary, devices):
            try:
                _download(server, cell, Path(tmp) / cell.cell_id, inputs)
            except RequestRefused as err:
                if err.status != NOT_FOUND:
                    raise
                summary.skipped.append(f"{cell.cell_id}: the server lacks its files ({err})")
                shutil.rmtree(Path(tmp) / cell.cell_id, ignore_errors=True)
                continue
            cells.append(cell)
            folders[cell.cell_id] = Path(tmp) / cell.cell_id
        if not cells:
            raise UsageError(f"none of the deployable cells could be pulled from {url}: "
                             + "; ".join(summary.skipped[:5]))
        return _ingest(store, summary, cells, folders, Origin(f"pull from {url}"), inputs)
