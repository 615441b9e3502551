"""Plan a grid and run it against a store: the one entry point `bench run` calls.

A plan whose every cell is stored ok is answered from a quick read of the store
(`finished_already`) without opening it as a `ResultsStore`, and nothing here loads the training
stack until a cell runs: `bench run` with nothing to do takes little longer than `bench --help`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.config import load_grid
from bench.runner.executors import Executor, ExecutorOptions, RunSummary, execute, make_executor
from bench.runner.plan import Overrides, Plan, apply_overrides, build_plan, confirm_data
from bench.store.peek import DB_NAME, LOG_DIR, exclusive, peek_done_ids

if TYPE_CHECKING:
    from bench.store import ResultsStore

log = logging.getLogger(__name__)

__all__ = ["Overrides", "Plan", "RunOptions", "RunSummary", "done_in", "executor_for",
           "finished_already", "plan_grid", "run_grid", "run_plan"]


@dataclass(frozen=True)
class RunOptions:
    grid: str = "smoke"
    store: Path = Path("results")
    overrides: Overrides = field(default_factory=Overrides)
    torch_device: str = "auto"     # `--device`: cpu, cuda or auto
    fail_fast: bool = False
    quiet: bool = False
    executor: str = "local"
    workers: int | None = None
    address: str | None = None


def plan_grid(options: RunOptions, allow_missing_data: bool = False) -> Plan:
    return build_plan(apply_overrides(load_grid(options.grid), options.overrides),
                      allow_missing_data)


def executor_for(options: RunOptions) -> Executor:
    """The executor the options name; checks its flags, starts nothing."""
    return make_executor(options.executor,
                         ExecutorOptions(options.workers, options.address, options.torch_device))


def run_grid(plan: Plan, store: ResultsStore, options: RunOptions,
             locked: Callable[[], None] | None = None) -> RunSummary:
    """Run the plan into the store (its data sets prepared first, for the cells that will run);
    ``locked`` is called once the store's run lock is held
    (UsageError if another process holds it, and then ``locked`` is never called)."""
    plan = confirm_data(plan, store.done_ids())
    return execute(plan, store, executor_for(options), fail_fast=options.fail_fast,
                   quiet=options.quiet, locked=locked)


def done_in(store: Path) -> set[str]:
    """Ids of the cells stored ok in the store folder ``store`` (none without a store)."""
    done = peek_done_ids(store)
    if done is not None:
        return done
    if not (store / DB_NAME).exists():
        return set()
    from bench.store import ResultsStore

    return ResultsStore(store, readonly=True).done_ids()


def finished_already(plan: Plan, store: Path, locked: Callable[[], None] | None = None
                     ) -> RunSummary | None:
    """The summary of running ``plan`` when every cell is stored ok in the (SQLite) store at
    ``store``, checked under the store's run lock like a run (``locked`` is called once it is
    held; UsageError if another process holds it); None when something may need to run, or
    the store must be opened to tell."""
    done = peek_done_ids(store)
    if done is None or any(c.cell_id not in done for c in plan.cells):
        return None
    with exclusive(store, "run"):
        if locked is not None:
            locked()
        log.info("all %d cells of grid '%s' are stored ok in %s: nothing to run",
                 len(plan.cells), plan.grid.name, store)
        return RunSummary(cached=[c.cell_id for c in plan.cells])


def run_plan(plan: Plan, options: RunOptions,
             locked: Callable[[Path], None] | None = None) -> RunSummary:
    """`bench run`: run ``plan`` into the store at ``options.store`` (created if need be).
    ``locked(log_dir)`` is called once the store's run lock is held."""
    store = options.store
    summary = finished_already(plan, store,
                               locked=locked and (lambda: locked(store / LOG_DIR)))
    if summary is not None:
        return summary
    executor_for(options).check_torch_device()
    from bench.store import ResultsStore

    results = ResultsStore(store)
    return run_grid(plan, results, options,
                    locked=locked and (lambda: locked(results.log_dir)))
