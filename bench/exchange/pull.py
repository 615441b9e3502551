"""`bench device pull`: bring deployable cells (records plus their ONNX files) to a device.

From a results server or an exported bundle, take the successful cells the filter selects that
have deploy artifacts, check every file against the SHA-256 its cell recorded, and only then
write the cells and files into the local store in one transaction. A device needs no training
stack for any of it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from bench.errors import UsageError
from bench.exchange.bundle import deploy_files, read_bundle
from bench.exchange.client import ServerClient
from bench.store.artifacts import file_sha256
from bench.store.database import ResultsStore
from bench.store.query import RecordFilter
from bench.store.records import CellData, IngestResult, RecordBatch


@dataclass
class PullSummary:
    """Cells taken, files checked, what the store did, and cells skipped (with why)."""

    source: str
    cells: int = 0
    files: int = 0
    result: IngestResult = field(default_factory=IngestResult)
    skipped: list[str] = field(default_factory=list)


def _selected(cell: CellData, selection: RecordFilter) -> bool:
    pairs = ((cell.dataset, selection.datasets), (cell.backbone, selection.backbones),
             (cell.method, selection.methods), (cell.w_bits, selection.w_bits),
             (cell.a_bits, selection.a_bits), (cell.cell_id, selection.cell_ids))
    return cell.status == "ok" and all(not values or value in values for value, values in pairs)


def _stage(cell: CellData, source: Path, work: Path) -> Path:
    """Copy the cell's deploy files from ``source`` into a fresh folder, checking each hash."""
    folder = work / cell.cell_id
    for name in deploy_files(cell):
        path = source / name
        if not path.is_file():
            raise UsageError(f"cell {cell.cell_id}: {name} is missing from the source")
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if file_sha256(target) != cell.artifact_hashes[name]:
            raise UsageError(f"cell {cell.cell_id}: {name} differs from the SHA-256 its cell "
                             "recorded; nothing was pulled")
    return folder


def pull(store: ResultsStore, source: str, selection: RecordFilter,
         token: str | None = None, server: ServerClient | None = None) -> PullSummary:
    """Pull from ``source``: an `http(s)://` server URL (or ``server``) or a bundle file."""
    if source.startswith(("http://", "https://")) or server is not None:
        return _from_server(store, source, selection,
                            server or ServerClient.connect(source, token))
    if not Path(source).is_file():
        raise UsageError(f"--from {source}: neither a server URL (http://, https://) nor a "
                         "bundle file")
    return _from_bundle(store, Path(source), selection)


def _ingest(store: ResultsStore, summary: PullSummary, cells: list[CellData],
            folders: dict[str, Path]) -> PullSummary:
    summary.cells = len(cells)
    summary.files = sum(len(deploy_files(c)) for c in cells)
    summary.result = store.ingest(RecordBatch(cells=cells), folders)
    return summary


def _deployable(candidates: list[CellData], selection: RecordFilter,
                summary: PullSummary) -> list[CellData]:
    chosen = []
    for cell in candidates:
        if not _selected(cell, selection):
            continue
        if deploy_files(cell):
            chosen.append(cell)
        else:
            summary.skipped.append(f"{cell.cell_id}: no deployed model")
    if not chosen:
        raise UsageError("no deployable cell matches: pull needs successful cells that ran the "
                         "deploy stage (`stages: {deploy: {}}` in the grid)")
    return chosen


def _from_bundle(store: ResultsStore, path: Path, selection: RecordFilter) -> PullSummary:
    summary = PullSummary(str(path))
    with read_bundle(path) as bundle, tempfile.TemporaryDirectory(prefix="medq-pull-") as tmp:
        cells = _deployable(bundle.batch.cells, selection, summary)
        folders = {}
        for cell in cells:
            source = bundle.artifact_dirs.get(cell.cell_id)
            if source is None:
                raise UsageError(f"{path}: cell {cell.cell_id} has no artifact files in the "
                                 "bundle; export it with --artifacts deploy")
            folders[cell.cell_id] = _stage(cell, source, Path(tmp))
        return _ingest(store, summary, cells, folders)


def _from_server(store: ResultsStore, url: str, selection: RecordFilter,
                 server: ServerClient) -> PullSummary:
    params = {"dataset": selection.datasets, "backbone": selection.backbones,
              "method": selection.methods, "w_bits": selection.w_bits,
              "a_bits": selection.a_bits, "status": ["ok"]}
    params = {key: values for key, values in params.items() if values}
    candidates = [CellData.model_validate({k: v for k, v in item.items() if k != "record_hash"})
                  for item in server.records("cell", params)]
    summary = PullSummary(url)
    cells = _deployable(candidates, selection, summary)
    with tempfile.TemporaryDirectory(prefix="medq-pull-") as tmp:
        downloads = Path(tmp) / "downloads"
        folders = {}
        for cell in cells:
            for name in deploy_files(cell):
                target = downloads / cell.cell_id / name
                target.parent.mkdir(parents=True, exist_ok=True)
                response = server.request(
                    "GET", f"/api/v1/cells/{quote(cell.cell_id)}/artifacts/{quote(name)}")
                target.write_bytes(response.content)
            folders[cell.cell_id] = _stage(cell, downloads / cell.cell_id, Path(tmp) / "ok")
        return _ingest(store, summary, cells, folders)
