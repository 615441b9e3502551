"""The driver: submits cells to an executor in dependency order and is the store's only writer.

Cells already stored ok are skipped. A cell is submitted once the cells it waits for are done
(order.py); results are committed as they arrive. A worker that dies mid-cell gets the cell
retried (at most MAX_RETRIES times; a crash that cannot be pinned on one cell is not counted,
and the cells it took down are retried one at a time until each is cleared). A cell that fails
is stored with its error, and the cells that start from it are stored as failed ("parent
failed") without running; the rest of the grid goes on. A plan with nothing to run never starts
the executor (nor loads the training stack).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

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
            with executor:
                summary = run.run()
            if progress.per_node:
                log.info("cells per node: %s", ", ".join(
                    f"{node}: {count}" for node, count in sorted(progress.per_node.items())))
            return summary


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
        for cell in self.plan.cells:
            if cell.cell_id in self.done:
                self.summary.cached.append(cell.cell_id)
                self.progress.cell_done()
            else:
                self.pending.append(cell)

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
        else:
            self.suspects.discard(cell.cell_id)
            self._stored(cell, commit_cell(self.store, finished.outcome), finished.node)
        self._show_running()

    def _crashed(self, cell: Cell, finished: Finished) -> None:
        for stale in self.store.staging_root.glob(f"{cell.cell_id}-*"):
            shutil.rmtree(stale, ignore_errors=True)
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

    def _stored(self, cell: Cell, record: CellRecord, node: str | None = None) -> None:
        self.progress.cell_done(node)
        if record.status == "ok":
            self.done.add(cell.cell_id)
            self.summary.ran.append(cell.cell_id)
            log.info("done %s: accuracy %.4f in %.1fs", cell.label, record.accuracy,
                     record.train_seconds)
        else:
            self.failed.add(cell.cell_id)
            self.summary.failed.append(cell.cell_id)
            log.error("failed %s: %s", cell.label, (record.error or "").splitlines()[0])
