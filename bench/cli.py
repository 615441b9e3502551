"""The `bench` command: verbs parse their flags, call one function and print.

Exit codes: 0 success; 1 some cells failed; 2 bad usage, configuration or input data.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="medq-bench: benchmark quantised, interpretable medical image classifiers.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

StoreOpt = Annotated[Path, typer.Option("--store", help="Results store folder.")]


def exits_on_usage_error(fn: F) -> F:
    """Print a UsageError (bad usage, config or data) and exit with 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from e
    return wrapper  # type: ignore[return-value]


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
@exits_on_usage_error
def run(
    grid: Annotated[str, typer.Option(help="Built-in grid (smoke, paper, full) or a YAML file.")]
    = "smoke",
    store: StoreOpt = Path("results"),
    dataset: Annotated[str | None, typer.Option(help="Data set to use instead of the grid's.")]
    = None,
    data_root: Annotated[str | None, typer.Option(help="Folder (or archive) of the data set.")]
    = None,
    backbone: Annotated[list[str] | None, typer.Option(help="Only this backbone (repeatable).")]
    = None,
    method: Annotated[list[str] | None, typer.Option(help="Only this method (repeatable).")]
    = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Use seeds 0..N-1.")] = None,
    epochs: Annotated[int | None, typer.Option(min=0, help="Epochs of every training phase.")]
    = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
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
    from bench.runner import Overrides, RunOptions, executor_for, plan_grid, run_grid
    from bench.store import ResultsStore

    options = RunOptions(grid, store, Overrides(dataset, data_root, tuple(backbone or ()),
                                                tuple(method or ()), seeds, epochs),
                         device.value, fail_fast, quiet, executor, workers, address)
    chosen = executor_for(options)
    buffer = logs.start_buffer()
    plan = plan_grid(options, allow_missing_data=dry_run)
    if dry_run:
        todo = print_plan(plan, store, chosen)
        if estimate:
            print_estimate(plan, todo)
        return
    results = ResultsStore(store)
    log_path = logs.to_file(buffer, results.log_dir)
    summary = run_grid(plan, results, options)
    out.print(f"{len(summary.ran)} ran, {len(summary.cached)} cached, {len(summary.failed)} "
              f"failed, {len(summary.skipped)} skipped; store {store}, log {log_path}")
    if summary.failed or summary.skipped:
        raise typer.Exit(1)


def print_plan(plan: Any, store: Path, executor: Any) -> set[str]:
    """Print each cell with its parent, whether it is cached and where it would run; returns
    the ids to run."""
    from bench.runner.plan import MissingData
    from bench.store.database import DB_NAME, ResultsStore

    done = ResultsStore(store).done_ids() if (store / DB_NAME).exists() else set()
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


def print_estimate(plan: Any, todo: set[str]) -> None:
    from bench.runner.estimate import estimate

    rows = estimate(plan, todo)
    table = Table(title="estimated compute (training steps timed on this machine)")
    for column in ("backbone", "method", "size", "cells", "s/step", "steps/cell", "hours"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.backbone, r.method, str(r.image_size), str(r.cells),
                      f"{r.step_seconds:.3f}", str(r.steps_per_cell), f"{r.seconds / 3600:.2f}")
    out.print(table)
    total = sum(r.seconds for r in rows)
    out.print(f"estimated total: {total / 3600:.2f} h ({total:.0f} s) for {len(todo)} cells "
              "on this machine, sequentially")


@app.command()
@exits_on_usage_error
def results(
    store: StoreOpt = Path("results"),
    format: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    profile: Annotated[str | None, typer.Option(
        help="Latency columns from this hardware profile only (default: each cell's most "
             "recent successful measurement).")] = None,
) -> None:
    """Print one record per cell."""
    from bench.saliency.consistency import with_seed_consistency
    from bench.store import RESULT_COLUMNS, ResultsStore
    from bench.store.measurements import empty_columns, measured_profiles

    opened = open_store(store, ResultsStore)
    if profile is not None and profile not in (known := measured_profiles(opened.engine)):
        raise UsageError(f"no measurement under profile '{profile}' in {store}; measured: "
                         f"{', '.join(known) or 'none (run `bench measure`)'}")
    rows = with_seed_consistency(opened.rows(profile), opened)
    if format is Format.json:
        sys.stdout.write(json.dumps(rows, indent=1, default=str) + "\n")
    elif format is Format.csv:
        import pandas as pd

        columns = dict.fromkeys([*RESULT_COLUMNS, *empty_columns(), *(k for r in rows for k in r)])
        pd.DataFrame(rows, columns=list(columns)).to_csv(sys.stdout, index=False)
    else:
        table = Table()
        shown = [*RESULT_COLUMNS[:11], *(c for c in ("int_kernels", "latency_ms_p50", "profile")
                                         if any(r.get(c) is not None for r in rows))]
        for column in shown:
            table.add_column(column)
        for row in rows:
            table.add_row(*(fmt(row.get(c)) for c in shown))
        (out if out.is_terminal else Console(width=250)).print(table)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def open_store(store: Path, cls: Any) -> Any:
    from bench.store.database import DB_NAME

    if not (store / DB_NAME).exists():
        raise UsageError(f"no results store at {store} (run `bench run --store {store}` first)")
    return cls(store)


class ReportFormat(StrEnum):
    html = "html"
    md = "md"
    csv = "csv"
    json = "json"
    latex = "latex"


@app.command()
@exits_on_usage_error
def report(
    store: StoreOpt = Path("results"),
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="File to write (default: reports/index.<html|md|csv|json|tex>).")] = None,
    format: Annotated[ReportFormat, typer.Option(
        "--format", help="html: the full self-contained report; md, csv, json, latex: the main "
                         "table (json: also summary and significance).")] = ReportFormat.html,
) -> None:
    """Write a self-contained HTML report of the store (or its main table in another format)."""
    from bench.report import build_report
    from bench.report.render import SUFFIXES
    from bench.store import ResultsStore

    target = out_path or Path(f"reports/index.{SUFFIXES[format.value]}")
    path = build_report(open_store(store, ResultsStore), target, format.value)
    out.print(f"report written to {path.resolve()}")


@app.command()
@exits_on_usage_error
def measure(
    profile: Annotated[str, typer.Option(
        help="Hardware profile (see `bench profiles`) or a profile TOML file.")],
    store: StoreOpt = Path("results"),
    backbone: Annotated[list[str] | None, typer.Option(help="Only this backbone (repeatable).")]
    = None,
    method: Annotated[list[str] | None, typer.Option(help="Only this method (repeatable).")]
    = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Batch size (default: the profile's first).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Time the store's deployed cells under a hardware profile on this machine."""
    from bench.measure import load_profile
    from bench.measure.runner import measure_store
    from bench.store import ResultsStore

    chosen = load_profile(profile)
    summary = measure_store(open_store(store, ResultsStore), chosen,
                            backbones=tuple(backbone or ()), methods=tuple(method or ()),
                            batch_size=batch_size, quiet=quiet)
    for cell_id, error in summary.errors.items():
        err.print(f"[bold red]failed:[/] {cell_id}: {error}", highlight=False, soft_wrap=True)
    total = len(summary.measured) + len(summary.skipped) + len(summary.failed)
    out.print(f"{len(summary.measured)} measured, {len(summary.skipped)} already measured, "
              f"{len(summary.failed)} failed; profile {chosen.name}, machine {summary.machine}, "
              f"batch size {summary.batch_size}"
              + ("" if total else " (no deployed cell: add `stages: {deploy: {}}` to the grid)"),
              highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
@exits_on_usage_error
def profiles() -> None:
    """List the hardware profiles."""
    from bench.measure import list_profiles, load_profile

    names = list_profiles()
    table = Table()
    table.add_column("profile", no_wrap=True, min_width=max(map(len, names)))
    for column in ("isolation", "threads", "limits", "description"):
        table.add_column(column)
    for name in names:
        p = load_profile(name)
        threads = f"intra {p.threads.intra_op or 'auto'}, inter {p.threads.inter_op or 'auto'}"
        table.add_row(name, p.isolation, threads, p.limits_text(), " ".join(p.description.split()))
    out.print(table)


@app.command()
def datasets() -> None:
    """List the data sets."""
    from bench.data import DATASETS

    listing("data set", {n: d.description + (" [masks]" if d.has_masks else "")
                         for n, d in DATASETS.items()})


@app.command()
def backbones() -> None:
    """List the backbones."""
    from bench.models import BACKBONES

    listing("backbone", {n: b.description for n, b in BACKBONES.items()})


@app.command()
def methods() -> None:
    """List the methods with their parameters and defaults."""
    from methods import METHODS

    table = Table()
    for column in ("method", "quantised", "parameters (defaults)", "description"):
        table.add_column(column)
    for name, m in sorted(METHODS.items()):
        params = ", ".join(f"{k}={v.default!r}" for k, v in m.Params.model_fields.items())
        table.add_row(name, "yes" if m.quantized else "no", params or "-", m.description)
    out.print(table)


def listing(kind: str, items: dict[str, str]) -> None:
    table = Table()
    table.add_column(kind)
    table.add_column("description")
    for name, text in sorted(items.items()):
        table.add_row(name, text)
    out.print(table)


if __name__ == "__main__":
    app()
