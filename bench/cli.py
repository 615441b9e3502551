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
out = Console()
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
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed cell.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run a grid of cells; cells already in the store are never recomputed."""
    from bench import logs
    from bench.runner import Overrides, RunOptions, plan_grid, run_grid
    from bench.store import ResultsStore

    options = RunOptions(grid, store, Overrides(dataset, data_root, tuple(backbone or ()),
                                                tuple(method or ()), seeds, epochs),
                         device.value, fail_fast, quiet)
    buffer = logs.start_buffer()
    plan = plan_grid(options)
    if dry_run:
        print_plan(plan, store)
        return
    results = ResultsStore(store)
    log_path = logs.to_file(buffer, results.log_dir)
    summary = run_grid(plan, results, options)
    out.print(f"{len(summary.ran)} ran, {len(summary.cached)} cached, {len(summary.failed)} "
              f"failed, {len(summary.skipped)} skipped; store {store}, log {log_path}")
    if summary.failed or summary.skipped:
        raise typer.Exit(1)


def print_plan(plan: Any, store: Path) -> None:
    from bench.store.database import DB_NAME, ResultsStore

    done = ResultsStore(store).done_ids() if (store / DB_NAME).exists() else set()
    table = Table(title=f"grid '{plan.grid.name}': {len(plan.cells)} cells")
    for column in ("cell", "parent", "status"):
        table.add_column(column)
    for cell in plan.cells:
        table.add_row(f"{cell.label} [{cell.cell_id}]", cell.config.parent_id or "-",
                      "cached" if cell.cell_id in done else "will run")
    out.print(table)
    todo = sum(c.cell_id not in done for c in plan.cells)
    out.print(f"{len(plan.cells) - todo} cached, {todo} will run")


@app.command()
@exits_on_usage_error
def results(
    store: StoreOpt = Path("results"),
    format: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Print one record per cell."""
    from bench.store import RESULT_COLUMNS, ResultsStore

    rows = open_store(store, ResultsStore).rows()
    if format is Format.json:
        sys.stdout.write(json.dumps(rows, indent=1, default=str) + "\n")
    elif format is Format.csv:
        import pandas as pd

        pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_csv(sys.stdout, index=False)
    else:
        table = Table()
        shown = RESULT_COLUMNS[:11]
        for column in shown:
            table.add_column(column)
        for row in rows:
            table.add_row(*(fmt(row[c]) for c in shown))
        out.print(table)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def open_store(store: Path, cls: Any) -> Any:
    from bench.store.database import DB_NAME

    if not (store / DB_NAME).exists():
        raise UsageError(f"no results store at {store} (run `bench run --store {store}` first)")
    return cls(store)


@app.command()
@exits_on_usage_error
def report(
    store: StoreOpt = Path("results"),
    out_path: Annotated[Path, typer.Option("--out", help="HTML file to write.")]
    = Path("reports/index.html"),
) -> None:
    """Write a self-contained HTML report of the store."""
    from bench.report import build_report
    from bench.store import ResultsStore

    path = build_report(open_store(store, ResultsStore), out_path)
    out.print(f"report written to {path.resolve()}")


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
