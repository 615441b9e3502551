"""Run a plan in this process, cell after cell, skipping cells the store already has."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from bench.progress import RunProgress
from bench.runner.cell import run_cell
from bench.runner.plan import Plan
from bench.store import ResultsStore

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def execute(plan: Plan, store: ResultsStore, device: torch.device, *, fail_fast: bool = False,
            quiet: bool = False) -> RunSummary:
    """Run every cell of the plan not yet stored as done; failures are stored and counted."""
    summary = RunSummary()
    done = store.done_ids()
    with store.run_lock(), RunProgress(len(plan.cells), quiet) as progress:
        for cell in plan.cells:
            if cell.cell_id in done:
                summary.cached.append(cell.cell_id)
                progress.cell_done()
                continue
            if fail_fast and summary.failed:
                summary.skipped.append(cell.cell_id)
                continue
            log.info("running %s (%s)", cell.label, cell.cell_id)
            progress.start_cell(cell.label, cell.config.train.epochs)
            record = run_cell(cell, plan.data[cell.data_key], store, plan.grid.name, device,
                              on_epoch=progress.epoch_done)
            progress.cell_done()
            if record.status == "ok":
                done.add(cell.cell_id)
                summary.ran.append(cell.cell_id)
                log.info("done %s: accuracy %.4f in %.1fs", cell.label, record.accuracy,
                         record.train_seconds)
            else:
                summary.failed.append(cell.cell_id)
                log.error("failed %s: %s", cell.label, (record.error or "").splitlines()[0])
    return summary
