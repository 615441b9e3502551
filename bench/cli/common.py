"""What the verbs share: the consoles, the options several verbs take, the store they open."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import UsageError

out = Console(soft_wrap=True)
err = Console(stderr=True)

StoreOpt = Annotated[Path, typer.Option("--store", help="Results store folder.")]
DatasetsOpt = Annotated[list[str] | None, typer.Option(
    help="Only this data set (repeatable; shell wildcards, e.g. 'kvasir*').")]
BackbonesOpt = Annotated[list[str] | None, typer.Option(
    help="Only this backbone (repeatable; shell wildcards, e.g. 'mobilenet*').")]
MethodsOpt = Annotated[list[str] | None, typer.Option(
    help="Only this method (repeatable; shell wildcards, e.g. 'pact*').")]
WBitsOpt = Annotated[list[int] | None, typer.Option(help="Only these weight bits.")]
ABitsOpt = Annotated[list[int] | None, typer.Option(help="Only these activation bits.")]
TokenOpt = Annotated[str | None, typer.Option(
    envvar="MEDQ_TOKEN", help="API token (default: $MEDQ_TOKEN).")]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def open_store(store: Path, cls: Any, readonly: bool = False) -> Any:
    """The store at ``store`` (it must exist); ``readonly`` for verbs that only read it."""
    from bench.store.database import DB_NAME

    if not (store / DB_NAME).exists():
        raise UsageError(f"no results store at {store} (run `bench run --store {store}` first)")
    return cls(store, readonly=readonly)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def print_wide(table: Table) -> None:
    """Print ``table`` to the terminal, or 250 columns wide when stdout is not one."""
    (out if out.is_terminal else Console(width=250)).print(table)
