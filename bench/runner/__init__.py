"""Plan a grid and run it against a store: the one entry point `bench run` calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import load_grid
from bench.errors import UsageError
from bench.runner.executors import Executor, ExecutorOptions, RunSummary, execute, make_executor
from bench.runner.plan import Overrides, Plan, apply_overrides, build_plan
from bench.store import ResultsStore, StoreBusyError

__all__ = ["Overrides", "Plan", "RunOptions", "RunSummary", "executor_for", "plan_grid",
           "run_grid"]


@dataclass(frozen=True)
class RunOptions:
    grid: str = "smoke"
    store: Path = Path("results")
    overrides: Overrides = field(default_factory=Overrides)
    device: str = "auto"
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
                         ExecutorOptions(options.workers, options.address, options.device))


def run_grid(plan: Plan, store: ResultsStore, options: RunOptions,
             locked: Callable[[], None] | None = None) -> RunSummary:
    """Run the plan into the store; ``locked`` is called once the store's run lock is held
    (UsageError if another process holds it, and then ``locked`` is never called)."""
    try:
        return execute(plan, store, executor_for(options), fail_fast=options.fail_fast,
                       quiet=options.quiet, locked=locked)
    except StoreBusyError as err:
        raise UsageError(str(err)) from err
