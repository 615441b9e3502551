"""Plan a grid and run it against a store: the one entry point `bench run` calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.config import load_grid
from bench.runner.local import RunSummary, execute, resolve_device
from bench.runner.plan import Overrides, Plan, apply_overrides, build_plan
from bench.store import ResultsStore

__all__ = ["Overrides", "Plan", "RunOptions", "RunSummary", "plan_grid", "run_grid"]


@dataclass(frozen=True)
class RunOptions:
    grid: str = "smoke"
    store: Path = Path("results")
    overrides: Overrides = field(default_factory=Overrides)
    device: str = "auto"
    fail_fast: bool = False
    quiet: bool = False


def plan_grid(options: RunOptions, allow_missing_data: bool = False) -> Plan:
    return build_plan(apply_overrides(load_grid(options.grid), options.overrides),
                      allow_missing_data)


def run_grid(plan: Plan, store: ResultsStore, options: RunOptions) -> RunSummary:
    torch.use_deterministic_algorithms(True, warn_only=True)
    return execute(plan, store, resolve_device(options.device), fail_fast=options.fail_fast,
                   quiet=options.quiet)
