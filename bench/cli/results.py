"""The verbs that read results: `bench results`, `bench report`, `bench compare`."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bench.cli.common import (
    ABitsOpt,
    BackbonesOpt,
    DatasetsOpt,
    Format,
    MethodsOpt,
    StoreOpt,
    TokenOpt,
    WBitsOpt,
    err,
    fmt,
    open_store,
    out,
    print_wide,
)
from bench.errors import UsageError


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

    opened = open_store(store, ResultsStore, readonly=True)
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
        shown = [*RESULT_COLUMNS[:11], *(c for c in ("int_kernels", "int_coverage",
                                                     "latency_ms_p50", "profile")
                                         if any(r.get(c) is not None for r in rows))]
        for column in shown:
            table.add_column(column)
        for row in rows:
            table.add_row(*(fmt(row.get(c)) for c in shown))
        print_wide(table)


class ReportFormat(StrEnum):
    html = "html"
    md = "md"
    csv = "csv"
    json = "json"
    latex = "latex"


class ReportTable(StrEnum):
    headline = "headline"
    main = "main"


def report(
    store: StoreOpt = Path("results"),
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="File to write (default: reports/index.<html|md|csv|json|tex>).")] = None,
    format: Annotated[ReportFormat, typer.Option(
        "--format", help="html: the full self-contained report; md, csv, latex: one table "
                         "(latex: the headline table with booktabs, md and csv: the main "
                         "table, unless --table); json: the tables, summary, significance and "
                         "per-class view.")] = ReportFormat.html,
    table: Annotated[ReportTable | None, typer.Option(
        "--table", help="The table md, csv and latex write: headline (per configuration: "
                        "accuracy against FP32 and the float control, size, speed-up, integer "
                        "coverage, saliency) or main (every column).")] = None,
    recall_margin: Annotated[float, typer.Option(
        "--recall-margin", min=0.0, help="Flag a class whose recall falls by more than this "
                                         "many percentage points against FP32.")] = 2.0,
    confusion: Annotated[str | None, typer.Option(
        "--confusion", help="Configuration whose confusion matrices are shown beside FP32's, "
                            "e.g. 'qat W4A4' (default: the quantised configuration with the "
                            "highest mean accuracy).")] = None,
) -> None:
    """Write a self-contained HTML report of the store (or one of its tables in another
    format)."""
    from bench.report import build_report
    from bench.report.build import ReportOptions
    from bench.report.render import SUFFIXES
    from bench.store import ResultsStore

    target = out_path or Path(f"reports/index.{SUFFIXES[format.value]}")
    options = ReportOptions(recall_margin, confusion, table.value if table else None)
    path = build_report(open_store(store, ResultsStore, readonly=True), target, format.value,
                        options)
    out.print(f"report written to {path.resolve()}")


def compare(
    devices: Annotated[str, typer.Option(
        help="Devices to compare, comma-separated (A,B); ratios are to the first.")],
    store: Annotated[Path | None, typer.Option(help="Read this results store.")] = None,
    server: Annotated[str | None, typer.Option(help="Read this results server (URL).")]
    = None,
    token: TokenOpt = None,
    dataset: DatasetsOpt = None,
    backbone: BackbonesOpt = None,
    method: MethodsOpt = None,
    w_bits: WBitsOpt = None,
    a_bits: ABitsOpt = None,
    profile: Annotated[str | None, typer.Option(
        help="Hardware profile to compare under (default: each device's most common).")]
    = None,
    format: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Per cell: latency and memory on each device, ratios between devices and vs FP32."""
    from bench.compare import table_rows, to_csv, to_json
    from bench.exchange.client import ServerClient, ServerError
    from bench.exchange.sources import compare_source
    from bench.store import ResultsStore
    from bench.store.query import RecordFilter

    if (store is None) == (server is None):
        raise UsageError("give one of --store DIR or --server URL")
    names = [d.strip() for d in devices.split(",") if d.strip()]
    selection = RecordFilter(datasets=dataset, backbones=backbone,
                             methods=method, w_bits=w_bits, a_bits=a_bits)
    source = open_store(store, ResultsStore, readonly=True) if store is not None \
        else ServerClient.connect(str(server), token)
    try:
        comparison = compare_source(source, names, selection, profile)
    except ServerError as e:
        err.print(f"[bold red]failed:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    if format is Format.json:
        sys.stdout.write(to_json(comparison) + "\n")
        return
    for line in comparison.describe():
        (err if format is Format.csv else out).print(line, highlight=False, soft_wrap=True)
    if format is Format.csv:
        sys.stdout.write(to_csv(comparison))
        return
    headers, rows = table_rows(comparison)
    table = Table()
    for column in headers:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    print_wide(table)
    if not rows:
        out.print("no cell is measured on these devices", highlight=False)
