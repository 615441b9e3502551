"""`bench measure`: time the store's deployed cells under a hardware profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.cli.common import BackbonesOpt, MethodsOpt, StoreOpt, err, open_store, out
from bench.errors import UsageError


def measure(
    profile: Annotated[str, typer.Option(
        help="Hardware profile (see `bench profiles`) or a profile TOML file.")],
    store: StoreOpt = Path("results"),
    backbone: BackbonesOpt = None,
    method: MethodsOpt = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Batch size (default: the profile's first).")] = None,
    device_name: Annotated[str | None, typer.Option(
        help="Name of this device in the records (default: $MEDQ_DEVICE, else the host name).")]
    = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    accuracy: Annotated[bool, typer.Option(
        "--accuracy/--no-accuracy", help="Also run each cell's test inputs, where pulled, and "
                                         "record the device's accuracy and agreement.")] = True,
) -> None:
    """Time the store's deployed cells under a hardware profile on this machine."""
    from bench.measure import IsolationUnavailable, load_profile
    from bench.measure.isolation import check_isolation
    from bench.measure.runner import measure_store
    from bench.store import ResultsStore

    chosen = load_profile(profile)
    try:
        check_isolation(chosen)
    except IsolationUnavailable as e:
        raise UsageError(str(e)) from e
    summary = measure_store(open_store(store, ResultsStore), chosen,
                            backbones=tuple(backbone or ()), methods=tuple(method or ()),
                            batch_size=batch_size, device=device_name, quiet=quiet,
                            accuracy=accuracy)
    for cell_id, error in summary.errors.items():
        err.print(f"[bold red]failed:[/] {cell_id}: {error}", highlight=False, soft_wrap=True)
    total = len(summary.measured) + len(summary.skipped) + len(summary.failed)
    out.print(f"{len(summary.measured)} measured, {len(summary.skipped)} already measured, "
              f"{len(summary.failed)} failed; profile {chosen.name}, device {summary.device}, "
              f"machine {summary.machine}, "
              f"batch size {summary.batch_size}"
              + ("" if total else " (no deployed cell: add `stages: {deploy: {}}` to the grid)"),
              highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)
