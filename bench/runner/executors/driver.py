"""The driver: submits cells to an executor in dependency order and is the store's only writer.

Cells already stored ok are skipped, except a stored cell that a cell to run starts from or
reads (its FP32 parent, its same-seed FP32 reference) whose artifact folder is gone or whose
files differ from the SHA-256 its record states: it is recomputed first (training is
deterministic), so no cell trains from a model other than its parent's record. A cell is
submitted once the cells it waits for are done (order.py); results are committed as they
arrive. A worker that dies mid-cell gets the cell retried (at most MAX_RETRIES times; a crash
that cannot be pinned on one cell is not counted, and the cells it took down are retried one
at a time until each is cleared). A cell that fails is stored with its error, and the cells
that start from it are stored as failed ("parent failed") without running; the rest of the
grid goes on. A plan with nothing to run never starts the executor (nor loads the training
stack).
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from bench.errors import DiskFullError, RunInterrupted, disk_full, disk_full_error
from bench.progress import RunProgress
from bench.runner.executors.base import Executor, Finished
from bench.runner.executors.order import Waits, waits
from bench.runner.executors.task import CellTask, StoreRef
from bench.runner.outcome import commit_cell, mark_failed, new_record
from bench.runner.plan import Cell, Plan

if TYPE_CHECKING:
    import torch

    from bench.store import CellRecord, ResultsStore

log = logging.getLogger(__name__)

MAX_RETRIES = 2


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)   # one entry per resubmission after a crash


def execute(plan: Plan, store: ResultsStore, executor: Executor, *, fail_fast: bool = False,
            quiet: bool = False, locked: Callable[[], None] | None = None) -> RunSummary:
    """Run every cell of the plan not yet stored ok; failures are stored and counted.
    ``locked`` is called once the store's run lock is held (a refused run writes nothing)."""
    with store.run_lock():
        if locked is not None:
            locked()
        with RunProgress(len(plan.cells), quiet) as progress:
            log.info("executor %s: %s", executor.name, executor.describe())
            run = _Run(plan, store, executor, progress, fail_fast)
            if not run.pending:
                return run.summary
            try:
                with _term_as_interrupt(), executor:
                    return run.run()
            except KeyboardInterrupt as stop:
                error = RunInterrupted(getattr(stop, "signum", signal.SIGINT),
                                       len(run.summary.ran))
                log.warning("%s", error)
                raise error from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, as SIGINT raises KeyboardInterrupt."""

    signum = signal.SIGTERM


@contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as SIGINT does (in the main thread; elsewhere it is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Run:
    def __init__(self, plan: Plan, store: ResultsStore, executor: Executor,
                 progress: RunProgress, fail_fast: bool) -> None:
        self.plan, self.store, self.executor = plan, store, executor
        self.progress, self.fail_fast = progress, fail_fast
        self.summary = RunSummary()
        self.cells = {c.cell_id: c for c in plan.cells}
        self.done = store.done_ids()
        self.failed: set[str] = set()
        self.waits: dict[str, Waits] = waits(plan)
        self.pending: list[Cell] = []
        self.running: dict[str, Cell] = {}
        self.crashes: Counter[str] = Counter()
        self.suspects: set[str] = set()
        self.store_ref = StoreRef.of(store)
        self._recompute_damaged()
        for cell in self.plan.cells:
            if cell.cell_id in self.done:
                self.summary.cached.append(cell.cell_id)
                self.progress.cell_done()
            else:
                self.pending.append(cell)

    def _recompute_damaged(self) -> None:
        """Take out of ``done`` every stored cell that a cell to run needs or follows and whose
        artifacts are not the ones its record states, so it runs again before them."""
        read = {cell_id for cell in self.plan.cells if cell.cell_id not in self.done
                for cell_id in self.waits[cell.cell_id].needs | self.waits[cell.cell_id].follows}
        for cell_id in sorted(read & self.done):
            record = self.store.get(cell_id)
            bad = self.store.damaged(record) if record is not None else []
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                log.warning("%s (%s): %s in %s missing or not the stored SHA-256; recomputing it "
                            "before the cells that read it", self.cells[cell_id].label, cell_id,
                            shown, self.store.artifact_dir(cell_id))
                self.done.discard(cell_id)

    @cached_property
    def torch_device(self) -> torch.device:
        """Where cells train (the executor's, once it has started)."""
        return self.executor.torch_device()

    def run(self) -> RunSummary:
        while self.pending or self.running:
            self._fail_orphans()
            self._submit_ready()
            if not self.running:
                break
            for finished in self.executor.wait():
                self._finish(finished)
        if self.pending and not self._stopping:
            log.error("%d cells could not start: what they wait for never finished",
                      len(self.pending))
        self.summary.skipped.extend(c.cell_id for c in self.pending)
        return self.summary

    @property
    def _stopping(self) -> bool:
        return self.fail_fast and bool(self.summary.failed)

    def _ready(self, cell: Cell, unfinished: set[str]) -> bool:
        w = self.waits[cell.cell_id]
        return w.needs <= self.done and not (w.follows & unfinished)

    def _store_failed(self, cell: Cell, error: str) -> None:
        record = new_record(cell, self.plan.grid.name, self.torch_device,
                            {"executor": self.executor.name})
        self.store.commit(mark_failed(record, error))
        self._stored(cell, record)

    def _fail_orphans(self) -> None:
        """Store as failed, without running them, the pending cells whose parent failed."""
        if self.fail_fast:
            return
        for cell in list(self.pending):
            parents = sorted(self.waits[cell.cell_id].needs & self.failed)
            if parents:
                self.pending.remove(cell)
                names = ", ".join(f"{self.cells[p].label} ({p})" for p in parents)
                self._store_failed(cell, f"parent failed: {names}")

    def _submit_ready(self) -> None:
        capacity = 1 if self.suspects else self.executor.slots
        unfinished = {c.cell_id for c in self.pending} | set(self.running)
        for cell in list(self.pending):
            if self._stopping or len(self.running) >= capacity:
                break
            if not self._ready(cell, unfinished):
                continue
            self.pending.remove(cell)
            self.running[cell.cell_id] = cell
            log.info("submitting %s (%s) to %s", cell.label, cell.cell_id, self.executor.name)
            on_epoch = None
            if self.executor.in_process:
                self.progress.start_cell(cell.label, cell.config.train.epochs)
                on_epoch = self.progress.epoch_done
            task = CellTask(cell, self.store_ref, self.plan.grid.name, str(self.torch_device),
                            self.executor.name)
            self.executor.submit(task, self.plan.data[cell.data_key].load(), on_epoch)
        self._show_running()

    def _show_running(self) -> None:
        if not self.executor.in_process:
            self.progress.cells_running([c.label for c in self.running.values()])

    def _finish(self, finished: Finished) -> None:
        cell = self.running.pop(finished.cell_id)
        if finished.outcome is None:
            self._crashed(cell, finished)
        elif finished.outcome.disk_full:
            self._drop_staged(cell)
            raise self._disk_full(cell, finished.outcome.record.error or "")
        else:
            self.suspects.discard(cell.cell_id)
            try:
                record = commit_cell(self.store, finished.outcome)
            except Exception as err:
                if (cause := disk_full(err)) is None:
                    raise
                self._drop_staged(cell)
                raise self._disk_full(cell, cause) from err
            self._stored(cell, record)
        self._show_running()

    def _drop_staged(self, cell: Cell) -> None:
        for stale in self.store.staging_root.glob(f"{cell.cell_id}-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _disk_full(self, cell: Cell, cause: BaseException | str) -> DiskFullError:
        """The run stops: a full disk is no cell's failure, and nothing of the cell is kept."""
        done = (f"{len(self.summary.ran)} cells committed this run, {cell.label} not stored "
                "(not failed)")
        error = disk_full_error(str(self.store.root), cause, done)
        log.error("%s", error)
        return error

    def _crashed(self, cell: Cell, finished: Finished) -> None:
        self._drop_staged(cell)
        if finished.sole:
            self.crashes[cell.cell_id] += 1
        else:
            self.suspects.add(cell.cell_id)
        crashes = self.crashes[cell.cell_id]
        if crashes > MAX_RETRIES:
            self.suspects.discard(cell.cell_id)
            self._store_failed(cell, f"WorkerCrashed: the worker died {crashes} times running "
                                     f"this cell; last: {finished.crash}")
            return
        log.warning("worker died running %s (%s): %s; retrying (%d/%d)", cell.label,
                    cell.cell_id, finished.crash, crashes, MAX_RETRIES)
        self.summary.retried.append(cell.cell_id)
        self.pending.insert(0, cell)

    def _stored(self, cell: Cell, record: CellRecord) -> None:
        self.progress.cell_done()
        if record.status == "ok":
            self.done.add(cell.cell_id)
            self.summary.ran.append(cell.cell_id)
            log.info("done %s: accuracy %.4f in %.1fs", cell.label, record.accuracy,
                     record.train_seconds)
        else:
            self.failed.add(cell.cell_id)
            self.summary.failed.append(cell.cell_id)
            log.error("failed %s: %s", cell.label, (record.error or "").splitlines()[0])
