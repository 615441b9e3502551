"""Worker side: what a worker is given for one cell, and how it computes it.

A task is small (the cell's config and where the store is); the worker prepares the data set
from the cell's DataConfig itself (bench.data caches decoded data on disk), reads the store only
for the FP32 parent and stage references, and returns the record with its staging folder. It
never writes the store: the driver commits. A Ray worker that shares no disk with the driver
reads a `ShippedStore` instead and may take the data set from the object store (shipping.py).

Every cell runs on CELL_THREADS torch threads, whatever the executor: the number of intra-op
threads changes the order of floating-point reductions and so the trained weights, and a cell's
results must not depend on where it ran. More cores are used by running more cells at once.

This module imports without torch (the driver builds tasks, and a run with nothing to do needs
no training stack); `run_task` loads it, and `WORKER_MODULES` is what a worker preloads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data import PreparedData, prepare
from bench.errors import DataError
from bench.runner.outcome import CellOutcome, describe_error, mark_failed, new_record
from bench.runner.plan import Cell
from bench.store.peek import DB_NAME

if TYPE_CHECKING:
    from bench.runner.executors.shipping import ShippedStore
    from bench.store import ResultsStore
    from bench.train import EpochHook

CELL_THREADS = 1
WORKER_MODULES = (__name__, "bench.runner.cell")
"""What a worker process imports to compute cells (the training stack)."""


@dataclass(frozen=True)
class StoreRef:
    """How a worker opens the store: its folder (absolute) and a database URL if not the default."""

    root: Path
    url: str | None = None

    @classmethod
    def of(cls, store: ResultsStore) -> StoreRef:
        default = f"sqlite:///{store.root / DB_NAME}"
        return cls(store.root.resolve(), None if store.url == default else store.url)


@dataclass(frozen=True)
class CellTask:
    cell: Cell
    store: StoreRef
    grid_name: str
    torch_device: str
    executor: str


@contextmanager
def cell_threads() -> Iterator[None]:
    """Run a cell on CELL_THREADS torch threads with deterministic algorithms (on CUDA too:
    cuBLAS needs a fixed workspace for that, set before its first use)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.get_num_threads()
    torch.set_num_threads(CELL_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_STORES: dict[StoreRef, ResultsStore] = {}
_DATA: dict[str, PreparedData] = {}
_FROM_DRIVER: set[str] = set()
"""Data keys of the data sets this worker took from the object store."""


def open_store(ref: StoreRef) -> ResultsStore:
    from bench.store import ResultsStore

    if ref not in _STORES:
        _STORES[ref] = ResultsStore(ref.root, ref.url)
    return _STORES[ref]


def prepared_data(cell: Cell, shipped: tuple[Any, ...] = ()) -> PreparedData:
    """The cell's data set, prepared in this worker (the last one is kept for the next cell); a
    worker that cannot prepare it (its view of the data root lacks the data) takes the one the
    driver put in Ray's object store (``shipped``), if any."""
    if cell.data_key not in _DATA:
        _DATA.clear()
        _FROM_DRIVER.clear()
        try:
            data = prepare(cell.config.dataset)
        except (DataError, OSError):
            if not shipped:
                raise
            import ray

            data = ray.get(shipped[0])
            _FROM_DRIVER.add(cell.data_key)
        if data.split.manifest_hash != cell.data_key:
            raise RuntimeError(f"the data set prepared on this worker has split manifest "
                               f"{data.split.manifest_hash}, the plan's is {cell.data_key}")
        _DATA[cell.data_key] = data
    return _DATA[cell.data_key]


def run_task(task: CellTask, data: PreparedData | None = None,
             on_epoch: EpochHook | None = None, store: ResultsStore | ShippedStore | None = None,
             shipped_data: tuple[Any, ...] = (), node: str | None = None) -> CellOutcome:
    """Compute one cell into a staging folder of ``store`` (default: the task's store); a
    failure is returned, not raised. ``shipped_data``: the ref of the prepared data set in Ray's
    object store, used when this worker cannot prepare it itself; ``node``: where this runs
    (Ray), noted in the record's provenance and in a failed cell's error. A file shipped from
    the driver that arrived damaged (ArtifactDamaged) is raised, not stored as the cell's
    failure."""
    import torch

    from bench.runner.cell import compute_cell

    torch_device = torch.device(task.torch_device)
    extra: dict[str, Any] = {"executor": task.executor, "torch_threads": CELL_THREADS,
                             "train_precision": task.cell.config.train.precision}
    if node is not None:
        extra["node"] = node
    with cell_threads():
        try:
            data = data or prepared_data(task.cell, shipped_data)
        except Exception as err:  # the cell fails, the worker goes on
            record = new_record(task.cell, task.grid_name, torch_device, extra)
            outcome = CellOutcome(mark_failed(record, describe_error(err)))
        else:
            if task.cell.data_key in _FROM_DRIVER:
                extra["data_from"] = "driver (Ray object store)"
            outcome = compute_cell(task.cell, data, store or open_store(task.store),
                                   task.grid_name, torch_device, on_epoch, extra)
            damaged = getattr(store, "arrived_damaged", None)   # ShippedStore's
            if damaged is not None:
                raise damaged   # not the cell's result: the driver retries it as a crash
    if node is not None and outcome.record.status == "failed":
        outcome.record.error = f"{outcome.record.error}\nran on node {node}"
    return outcome
