"""`bench device pull`: bring deployable cells (records plus their ONNX files) to a device.

From a results server or an exported bundle, take the successful cells the filter selects that
have deploy artifacts (and, unless ``inputs=False``, their test inputs for accuracy mode),
check every file against the SHA-256 its cell recorded, and only then
write the cells and files into the local store in one transaction. Files from a server are
streamed to disk; a cell whose files the server lacks is skipped, the others are pulled. A
device needs no training stack for any of it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from bench.errors import UsageError
from bench.exchange.bundle import read_bundle
from bench.exchange.client import API, RequestRefused, ServerClient
from bench.exchange.scratch import Scratch
from bench.store.artifacts import file_sha256
from bench.store.database import ResultsStore
from bench.store.deploy import deploy_files
from bench.store.query import RecordFilter
from bench.store.records import CellData, FutureRecordError, IngestResult, Origin, RecordBatch

NOT_FOUND = 404


@dataclass
class PullSummary:
    """Cells taken, files checked, what the store did, and cells skipped (with why)."""

    source: str
    cells: int = 0
    files: int = 0
    result: IngestResult = field(default_factory=IngestResult)
    skipped: list[str] = field(default_factory=list)


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


def pull(store: ResultsStore, source: str, selection: RecordFilter,
         token: str | None = None, server: ServerClient | None = None,
         inputs: bool = True) -> PullSummary:
    """Pull from ``source``: an `http(s)://` server URL (or ``server``) or a bundle file;
    ``inputs=False`` leaves the cells' test inputs behind (the device can then only time).

    Holds the store's "run" lock throughout, as `bench run` does (both write artifact
    folders); UsageError if another process holds it."""
    with store.exclusive("run"):
        if source.startswith(("http://", "https://")) or server is not None:
            return _from_server(store, source, selection,
                                server or ServerClient.connect(source, token), inputs)
        if not Path(source).is_file():
            raise UsageError(f"--from {source}: neither a server URL (http://, https://) "
                             "nor a bundle file")
        return _from_bundle(store, Path(source), selection, inputs)


def _ingest(store: ResultsStore, summary: PullSummary, cells: list[CellData],
            folders: dict[str, Path], origin: Origin, inputs: bool) -> PullSummary:
    summary.cells = len(cells)
    summary.files = sum(len(deploy_files(c, inputs)) for c in cells)
    try:
        summary.result = store.ingest(RecordBatch(cells=cells), folders, origin)
    except FutureRecordError as err:
        raise UsageError(f"{summary.source}: {err}; nothing was pulled") from err
    return summary


def _deployable(candidates: list[CellData], selection: RecordFilter,
                summary: PullSummary) -> list[CellData]:
    chosen = []
    for cell in candidates:
        if cell.status != "ok" or not selection.matches(cell):
            continue
        if deploy_files(cell):
            chosen.append(cell)
        else:
            summary.skipped.append(f"{cell.cell_id}: no deployed model")
    if not chosen:
        raise UsageError("no deployable cell matches: pull needs successful cells that ran the "
                         "deploy stage (`stages: {deploy: {}}` in the grid)")
    return chosen


def _from_bundle(store: ResultsStore, path: Path, selection: RecordFilter, inputs: bool
                 ) -> PullSummary:
    summary = PullSummary(str(path))
    with read_bundle(path) as bundle, Scratch("medq-pull-") as tmp:
        cells = _deployable(bundle.batch.cells, selection, summary)
        folders = {}
        for cell in cells:
            source = bundle.artifact_dirs.get(cell.cell_id)
            if source is None:
                raise UsageError(f"{path}: cell {cell.cell_id} has no artifact files in the "
                                 "bundle; export it with --artifacts deploy")
            folders[cell.cell_id] = _stage(cell, source, Path(tmp), inputs)
        return _ingest(store, summary, cells, folders, bundle.origin("pull of bundle"), inputs)


def _download(server: ServerClient, cell: CellData, folder: Path, inputs: bool) -> None:
    """Stream the cell's deploy files into ``folder``, checking each hash."""
    for name in deploy_files(cell, inputs):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        path = f"{API}/cells/{quote(cell.cell_id)}/artifacts/{quote(name)}"
        _check(cell, name, server.download(path, target))


def _from_server(store: ResultsStore, url: str, selection: RecordFilter,
                 server: ServerClient, inputs: bool) -> PullSummary:
    params = {"dataset": selection.datasets, "backbone": selection.backbones,
              "method": selection.methods, "w_bits": selection.w_bits,
              "a_bits": selection.a_bits, "status": ["ok"]}
    params = {key: values for key, values in params.items() if values}
    candidates = [CellData.from_api(item) for item in server.records("cell", params)]
    summary = PullSummary(url)
    cells = []
    with Scratch("medq-pull-") as tmp:
        folders = {}
        for cell in _deployable(candidates, selection, summary):
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
