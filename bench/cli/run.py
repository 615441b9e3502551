"""`bench run`: run a grid into the store, or with --dry-run print its plan and estimate."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bench.cli.common import BackbonesOpt, MethodsOpt, StoreOpt, err, out
from bench.errors import RunInterrupted, UsageError


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def run(
    grid: Annotated[str, typer.Option(help="Built-in grid (smoke, paper, full) or a YAML file.")]
    = "smoke",
    store: StoreOpt = Path("results"),
    dataset: Annotated[str | None, typer.Option(help="Data set to use instead of the grid's.")]
    = None,
    data_root: Annotated[str | None, typer.Option(help="Folder (or archive) of the data set.")]
    = None,
    backbone: BackbonesOpt = None,
    method: MethodsOpt = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Use seeds 0..N-1.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of every training phase.")]
    = None,
    torch_device: Annotated[Device, typer.Option(
        "--device", help="The torch device cells train on (auto: CUDA where there is one).")]
    = Device.auto,
    dry_run: Annotated[bool, typer.Option(help="Print the plan; run nothing.")] = False,
    estimate: Annotated[bool, typer.Option(
        help="With --dry-run: time each method's training step here and estimate the total.")]
    = True,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed cell.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    executor: Annotated[str, typer.Option(
        help="Where cells run: local (this process, one at a time), process (a pool of worker "
             "processes here) or ray (one Ray task a cell).")] = "local",
    workers: Annotated[int | None, typer.Option(
        min=1, help="process: worker processes; ray: CPUs of the local Ray cluster "
                    "(default: this machine's cores).")] = None,
    address: Annotated[str | None, typer.Option(
        help="ray: join this cluster (auto or ray://HOST:PORT) instead of starting one.")]
    = None,
) -> None:
    """Run a grid of cells; cells already in the store are never recomputed."""
    from bench import logs
    from bench.runner import Overrides, RunOptions, executor_for, plan_grid, run_plan
    from bench.store.identity import local_device

    try:
        local_device()
    except ValueError as e:
        raise UsageError(str(e)) from e
    options = RunOptions(grid, store, Overrides(dataset, data_root, tuple(backbone or ()),
                                                tuple(method or ()), seeds, epochs),
                         torch_device.value, fail_fast, quiet, executor, workers, address)
    chosen = executor_for(options)
    buffer = logs.start_buffer()
    plan = plan_grid(options, allow_missing_data=dry_run)
    if dry_run:
        todo = print_plan(plan, store, chosen)
        if estimate:
            print_estimate(plan, todo, chosen)
        return
    log_paths: list[Path] = []
    try:
        summary = run_plan(plan, options,
                           locked=lambda log_dir: log_paths.append(logs.to_file(buffer, log_dir)))
    except RunInterrupted as stop:
        err.print(f"{stop}; log {log_paths[0] if log_paths else '-'}", highlight=False)
        raise typer.Exit(128 + stop.signum) from None
    out.print(f"{len(summary.ran)} ran, {len(summary.cached)} cached, {len(summary.failed)} "
              f"failed, {len(summary.skipped)} skipped; store {store}, log {log_paths[0]}")
    if summary.failed or summary.skipped:
        raise typer.Exit(1)


def print_plan(plan: Any, store: Path, executor: Any) -> set[str]:
    """Print each cell with its parent, whether it is cached and where it would run; returns
    the ids to run."""
    from bench.runner import done_in
    from bench.runner.plan import MissingData

    done = done_in(store)
    for data in plan.data.values():
        if isinstance(data, MissingData):
            out.print(f"[yellow]data set '{data.config.name}' is not available here[/] "
                      f"({data.reason}); cell ids below are provisional and every cell "
                      "counts as to run", highlight=False)
    table = Table(title=f"grid '{plan.grid.name}': {len(plan.cells)} cells")
    for column in ("cell", "parent", "status", "where"):
        table.add_column(column)
    for cell in plan.cells:
        cached = cell.cell_id in done
        table.add_row(f"{cell.label} [{cell.cell_id}]", cell.config.parent_id or "-",
                      "cached" if cached else "will run", "-" if cached
                      else executor.placement(cell))
    out.print(table)
    out.print(f"executor {executor.name}: {executor.describe()}", highlight=False)
    todo = {c.cell_id for c in plan.cells if c.cell_id not in done}
    out.print(f"{len(plan.cells)} cells: {len(plan.cells) - len(todo)} cached, "
              f"{len(todo)} will run")
    return todo


def print_estimate(plan: Any, todo: set[str], executor: Any) -> None:
    """Time each kind of cell here and print the cells' costs, the compute's shares and the
    wall time on the executor's parallelism. With nothing to run there is nothing to time (and
    the training stack stays unloaded)."""
    if not todo:
        out.print("estimated total: 0.00 h (0 s): every cell is cached, nothing to time")
        return
    import time

    import psutil

    from bench.runner.estimate import estimate
    from bench.runner.estimate.costs import EVALUATION, SETUP, TRAINING
    from bench.runner.estimate.probe import REPEATS

    # after importing the estimate, which loads torch as a run's first cell to train does
    startup = time.time() - psutil.Process().create_time()
    began = time.perf_counter()
    result = estimate(plan, todo, executor, startup)
    stages = list(dict.fromkeys(t for r in result.rows for t in r.terms_per_cell
                                if t not in (SETUP, TRAINING, EVALUATION)))
    table = Table(title="estimated compute (training steps timed on this machine)")
    for column in ("backbone", "method", "size", "cells", "s/step", "steps/cell", "setup s",
                   "eval s", *(f"{s} s" for s in stages), "hours"):
        table.add_column(column)
    for r in result.rows:
        per_cell = [r.terms_per_cell.get(t, 0.0) for t in (SETUP, EVALUATION, *stages)]
        table.add_row(r.backbone, r.method, str(r.image_size), str(r.cells),
                      f"{r.step_seconds:.3f}", str(r.steps_per_cell),
                      *(f"{v:.1f}" for v in per_cell), f"{r.seconds / 3600:.2f}")
    out.print(table)
    terms = result.term_seconds()
    shares = ", ".join(f"{name} {result.share(name):.0%}" for name in terms)
    out.print(f"compute: {result.compute_s / 3600:.2f} h ({result.compute_s:.0f} s) of cells: "
              f"{shares or 'nothing to run'}", highlight=False)
    for stage in stages:
        out.print(f"{stage} stage: {result.share(stage):.1%} of the compute "
                  f"({terms.get(stage, 0.0) / 3600:.2f} h)", highlight=False)
    chosen = result.assumptions
    how = "sequentially" if chosen.concurrency == 1 else f"{chosen.concurrency} cells at a time"
    out.print(f"estimated total: {result.total_s / 3600:.2f} h ({result.total_s:.0f} s) for "
              f"{len(todo)} cells on this machine, {how} (start {result.startup_s:.0f} s, "
              f"workers {result.workers_start_s:.0f} s, cells {result.schedule_s:.0f} s)",
              highlight=False)
    out.print(f"assumed: {chosen.describe()}; each kind of cell timed {REPEATS} times after a "
              f"warm-up (median); estimating took {time.perf_counter() - began:.0f} s",
              highlight=False)
    if result.not_estimated:
        out.print(f"[yellow]not estimated:[/] stage {', '.join(result.not_estimated)} (no cost "
                  "function)", highlight=False)
