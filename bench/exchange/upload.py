"""`bench upload`: send the store's records of the token's device that the server lacks.

The server names the token's device; the store's cells and measurements of that device are
hashed, the server is asked which hashes it holds, and the rest go in batches. Uploads are
idempotent and the server is asked again on every run, so an interrupted upload run again
completes with nothing lost or doubled. With artifacts, cells travel in small bundles that
carry their files and the device's measurements of them; a cell the server already holds
without some of those files is sent again as a bundle (the server keeps the unchanged
record and adds the files); a JSON batch or a bundle the server finds too large (413) is
split in two and sent again, down to one record or one cell. With a signer (the device's key,
`bench keys create`), every body is signed (`X-Medq-Signature`) and every bundle's manifest too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.orm import Session

from bench.exchange.bundle import (
    BUNDLE_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    ArtifactMode,
    export_bundle,
)
from bench.exchange.client import RequestRefused, ServerClient
from bench.exchange.scratch import Scratch
from bench.exchange.signing import Signer, sign_upload
from bench.store.database import ResultsStore
from bench.store.deploy import deploy_files
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData, RecordBatch

Record = CellData | MeasurementData
TOO_LARGE = 413


@dataclass
class UploadSummary:
    """What one upload run did: records of the device, how many the server already held, how
    many were sent, how many held cells were sent again for their files and what the server
    did with them."""

    device: str
    local: int = 0
    already: int = 0
    sent: int = 0
    batches: int = 0
    resent: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("added", "replaced", "unchanged", "stale"), 0))
    seconds: float = 0.0
    signer: str = "not signed"

    @property
    def rate(self) -> float:
        """Records sent per second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def add(self, response: dict[str, int], sent: int) -> None:
        self.sent += sent
        self.batches += 1
        for key in self.counts:
            self.counts[key] += int(response.get(key, 0))

    def text(self) -> str:
        counts = ", ".join(f"{n} {key}" for key, n in self.counts.items())
        return (f"device {self.device}: {self.local} local records, {self.already} already on "
                f"the server, {self.sent} sent in {self.batches} batches (server: {counts}); "
                f"{self.resent} cells' files resent; {self.signer}; "
                f"{self.seconds:.1f} s, {self.rate:.0f} records/s")


def local_records(store: ResultsStore, device: str) -> tuple[list[CellData], list[MeasurementData]]:
    """The store's cells and measurements whose `device` is ``device``."""
    chosen = RecordFilter(devices=[device], cells_by_device=True)
    with Session(store.engine) as session:
        cells = [CellData.of(row) for row in session.scalars(chosen.cells())]
        measurements = [MeasurementData.of(row) for row in session.scalars(chosen.measurements())]
    return cells, measurements


def upload_store(store: ResultsStore, server: ServerClient, batch_size: int = 500,
                 artifacts: ArtifactMode = "none", bundle_cells: int = 10, quiet: bool = False,
                 console: Console | None = None, signer: Signer | None = None
                 ) -> UploadSummary:
    """Upload what the server lacks of the store's records of the server-named device, each
    body signed by ``signer`` if given."""
    if batch_size < 1 or bundle_cells < 1:
        raise ValueError("batch sizes must be at least 1")
    start = time.perf_counter()
    summary = UploadSummary(server.whoami())
    if signer is not None:
        summary.signer = f"signed with key {signer.public.fingerprint}"
    cells, measurements = local_records(store, summary.device)
    summary.local = len(cells) + len(measurements)
    hashes = {id(r): r.content_hash() for r in (*cells, *measurements)}
    known = server.known(list(dict.fromkeys(hashes.values())))
    held = [c for c in cells if hashes[id(c)] in known]
    resend = _lacking_files(server, held, artifacts) if artifacts != "none" else []
    resent_ids = {c.cell_id for c in resend}
    total = len(resend) + sum(1 for m in measurements if m.cell_id in resent_ids)
    cells = [c for c in cells if hashes[id(c)] not in known]
    unsent = [m for m in measurements if hashes[id(m)] not in known]
    summary.already = summary.local - len(cells) - len(unsent)
    summary.resent = len(resend)
    measurements = [m for m in unsent if m.cell_id not in resent_ids]
    total += len(cells) + len(measurements)
    cells = [*cells, *resend]
    console = console or Console(stderr=True)
    with Progress(TextColumn("upload"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task("upload", total=total)
        if artifacts != "none":
            for chunk in _chunks(cells, bundle_cells):
                for sent, response in _send_bundle(store, server, chunk, artifacts, signer):
                    summary.add(response, sent)
                    bar.advance(task, sent)
            bundled = {c.cell_id for c in cells}
            measurements = [m for m in measurements if m.cell_id not in bundled]
            cells = []
        for chunk in _chunks([*cells, *measurements], batch_size):
            for part, response in _send(server, chunk, signer):
                summary.add(response, len(part))
                bar.advance(task, len(part))
    summary.seconds = time.perf_counter() - start
    return summary


def _lacking_files(server: ServerClient, cells: list[CellData], artifacts: ArtifactMode
                   ) -> list[CellData]:
    """Those of ``cells`` (held by the server) that lack a file ``artifacts`` would send."""
    missing = server.missing_artifacts([c.cell_id for c in cells])
    lacking = []
    for cell in cells:
        wanted = deploy_files(cell) if artifacts == "deploy" else cell.artifact_hashes
        if set(wanted) & set(missing.get(cell.cell_id, ())):
            lacking.append(cell)
    return lacking


def _chunks(records: Sequence[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield list(records[start:start + size])


def _signature(signer: Signer | None, body: bytes) -> str | None:
    return None if signer is None else sign_upload(signer, body)


def _send(server: ServerClient, records: list[Record], signer: Signer | None = None
          ) -> Iterator[tuple[list[Record], dict[str, int]]]:
    """Send ``records`` as one JSON batch, halving it while the server finds it too large."""
    batch = RecordBatch(cells=[r for r in records if isinstance(r, CellData)],
                        measurements=[r for r in records if isinstance(r, MeasurementData)])
    body = batch.model_dump_json().encode()
    try:
        yield records, server.upload(body, JSON_CONTENT_TYPE, _signature(signer, body))
    except RequestRefused as err:
        if err.status != TOO_LARGE or len(records) == 1:
            raise
        half = len(records) // 2
        yield from _send(server, records[:half], signer)
        yield from _send(server, records[half:], signer)


def _send_bundle(store: ResultsStore, server: ServerClient, cells: list[CellData],
                 artifacts: ArtifactMode, signer: Signer | None = None
                 ) -> Iterator[tuple[int, dict[str, int]]]:
    """Send ``cells`` as one bundle, halving it while the server finds it too large; yields
    the records each sent bundle held and the server's answer. A single cell too large is
    refused (exit 2), naming the cell."""
    content, held = _bundle(store, cells, artifacts, signer)
    try:
        response = server.upload(content, BUNDLE_CONTENT_TYPE, _signature(signer, content))
    except RequestRefused as err:
        if err.status != TOO_LARGE:
            raise
        if len(cells) == 1:
            raise RequestRefused(f"cell {cells[0].cell_id}: its bundle ({len(content)} bytes, "
                                 f"--artifacts {artifacts}) is larger than the server accepts; "
                                 f"{err}", TOO_LARGE) from err
    else:
        yield held, response
        return
    del content
    half = len(cells) // 2
    yield from _send_bundle(store, server, cells[:half], artifacts, signer)
    yield from _send_bundle(store, server, cells[half:], artifacts, signer)


def _bundle(store: ResultsStore, cells: list[CellData], artifacts: ArtifactMode,
            signer: Signer | None = None) -> tuple[bytes, int]:
    """A bundle of ``cells``, their device's measurements of them and the chosen artifact
    files (its manifest signed by ``signer``); and how many records it holds."""
    chosen = RecordFilter(cell_ids=[c.cell_id for c in cells],
                          devices=[cells[0].device], cells_by_device=True)
    with Scratch("medq-upload-") as folder:
        path = Path(folder) / "cells.tar.gz"
        written = export_bundle(store, path, chosen, artifacts, signer)
        return path.read_bytes(), written.cells + written.measurements
