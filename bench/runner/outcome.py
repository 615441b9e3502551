"""A cell's outcome and its record, driver side: made, marked failed and committed without the
training stack (the worker side, which computes a cell, is bench/runner/cell.py)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from bench.runner.plan import Cell
    from bench.store import CellRecord, ResultsStore


@dataclass
class CellOutcome:
    """A computed cell, not yet stored: its record and its staged artifacts (None if failed);
    ``disk_full``: it failed because a disk was full (not the cell's fault: the driver stops
    the run instead of storing it as failed)."""

    record: CellRecord
    staged: Path | None = None
    disk_full: bool = False


def new_record(cell: Cell, grid_name: str, torch_device: torch.device | str,
               provenance_extra: dict[str, Any] | None = None) -> CellRecord:
    from bench.provenance import provenance  # psutil, package metadata: not for a cached run
    from bench.store import CellRecord

    cfg = cell.config
    return CellRecord(
        cell_id=cell.cell_id, parent_id=cfg.parent_id, grid=grid_name, dataset=cfg.dataset.name,
        backbone=cfg.backbone.name, method=cfg.method, w_bits=cfg.w_bits, a_bits=cfg.a_bits,
        seed=cfg.seed, split_manifest=cfg.split_manifest, config=cfg.model_dump(mode="json"),
        provenance={**provenance(), "device": str(torch_device), **(provenance_extra or {})},
        started_at=datetime.now(UTC), error=None)


def mark_failed(record: CellRecord, error: str) -> CellRecord:
    from bench.store.bounds import clip_text

    record.status, record.error = "failed", clip_text(error)
    record.metrics, record.finished_at = {}, datetime.now(UTC)
    return record


def describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"


def commit_cell(store: ResultsStore, outcome: CellOutcome) -> CellRecord:
    """Driver side: store a computed cell (the store's only writer)."""
    record, staged = outcome.record, outcome.staged
    if staged is not None and not staged.is_dir():
        mark_failed(record, f"StagingMissing: the worker's artifacts {staged} are not visible "
                            "here (the store must be on a file system every worker shares)")
        staged = None
    store.commit(record, staged)
    return record

