"""Records between machines: `bench export`, `bench import`, `bench upload`, `bench device
pull`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bench.cli.common import (
    ABitsOpt,
    BackbonesOpt,
    DatasetsOpt,
    MethodsOpt,
    StoreOpt,
    TokenOpt,
    WBitsOpt,
    err,
    open_store,
    out,
)
from bench.errors import UsageError


class ArtifactChoice(StrEnum):
    none = "none"
    deploy = "deploy"
    all = "all"


def export(
    out_path: Annotated[Path, typer.Option("--out", help="Bundle file to write (.tar.gz).")],
    store: StoreOpt = Path("results"),
    dataset: DatasetsOpt = None,
    backbone: BackbonesOpt = None,
    method: MethodsOpt = None,
    w_bits: WBitsOpt = None,
    a_bits: ABitsOpt = None,
    device: Annotated[list[str] | None, typer.Option(
        help="Only records made on this device: its cells and measurements (repeatable).")]
    = None,
    profile: Annotated[list[str] | None, typer.Option(
        help="Only measurements under this hardware profile (repeatable).")] = None,
    artifacts: Annotated[ArtifactChoice | None, typer.Option(
        help="Artifact files to include: none (default), deploy (what a device needs to "
             "measure) or all.")] = None,
    with_artifacts: Annotated[bool, typer.Option(
        "--with-artifacts", help="Same as --artifacts all.")] = False,
) -> None:
    """Write the store's records (and artifact files) to a bundle for `bench import`; its
    manifest is signed with this machine's signing key if it has one (`bench keys create`)."""
    from bench.exchange.bundle import export_bundle
    from bench.store import ResultsStore
    from bench.store.query import RecordFilter

    if with_artifacts and artifacts not in (None, ArtifactChoice.all):
        raise UsageError(f"--with-artifacts means --artifacts all, not {artifacts.value}")
    chosen = ArtifactChoice.all if with_artifacts else artifacts or ArtifactChoice.none
    selection = RecordFilter(datasets=dataset, backbones=backbone,
                             methods=method, w_bits=w_bits, a_bits=a_bits,
                             devices=device, profiles=profile,
                             cells_by_device=True)
    from bench.exchange.signing import load_signer

    summary = export_bundle(open_store(store, ResultsStore, readonly=True), out_path, selection,
                            chosen.value, load_signer())
    for skipped in summary.skipped:
        err.print(f"[yellow]artifact left out:[/] {escape(skipped)}", highlight=False,
                  soft_wrap=True)
    signed = (f"signed with key {summary.signer.fingerprint}" if summary.signer else
              "not signed: no signing key (`bench keys create` makes one)")
    out.print(f"{summary.cells} cells, {summary.measurements} measurements, {summary.files} "
              f"artifact files -> {summary.path} ({summary.size_bytes} bytes, sha256 "
              f"{summary.sha256}); {signed}", highlight=False, soft_wrap=True)
    if summary.skipped:
        raise typer.Exit(1)


def import_(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `bench export`.")],
    store: StoreOpt = Path("results"),
    trust: Annotated[list[Path] | None, typer.Option(
        help="Public-key file (`.pub` of `bench keys create`, one key a line; repeatable): "
             "import only a bundle signed by one of these keys.")] = None,
) -> None:
    """Check a bundle completely, then add its records and files to the store (created if
    missing) in one transaction; a record replaces a stored one only if better. Says who
    signed the records (with --trust: refused unless a trusted key did). Refused (exit 2)
    while a `bench run` or `bench device pull` is writing to the store."""
    from bench.exchange.bundle import import_bundle
    from bench.exchange.signing import read_public_keys

    keys = read_public_keys(trust) if trust else None
    result = import_bundle(store, bundle, trust=keys)
    out.print(f"imported {bundle} into {store}: " + ", ".join(
        f"{n} {what}" for what, n in result.as_counts().items())
        + f"; signer of all {result.records} records: {result.signer}", highlight=False,
        soft_wrap=True)


def upload(
    to: Annotated[str, typer.Option("--to", help="Results server URL, e.g. http://host:8080.")],
    token: TokenOpt = None,
    store: StoreOpt = Path("results"),
    batch_size: Annotated[int, typer.Option(min=1, help="Records per request.")] = 500,
    artifacts: Annotated[ArtifactChoice, typer.Option(
        help="Artifact files sent with the cells: none, deploy (what a device needs to "
             "measure) or all.")] = ArtifactChoice.none,
    with_artifacts: Annotated[bool, typer.Option(
        "--with-artifacts", help="Same as --artifacts all (as for `bench export`).")] = False,
    attempts: Annotated[int, typer.Option(
        min=1, help="Tries per request on connection errors, timeouts, 429 and 502-504.")] = 6,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Send the store's records of the token's device that the server does not have yet,
    signed with this machine's signing key if it has one (`bench keys create`)."""
    from bench.exchange.client import RetryPolicy, ServerClient, ServerError
    from bench.exchange.upload import upload_store
    from bench.store import ResultsStore

    if not token:
        raise UsageError("an API token is needed: --token T or MEDQ_TOKEN "
                         "(the server's admin creates one with `bench serve token create`)")
    if with_artifacts and artifacts not in (ArtifactChoice.none, ArtifactChoice.all):
        raise UsageError(f"--with-artifacts means --artifacts all, not {artifacts.value}")
    chosen = ArtifactChoice.all if with_artifacts else artifacts
    from bench.exchange.signing import load_signer

    signer = load_signer()
    server = ServerClient.connect(to, token, RetryPolicy(attempts=attempts))
    try:
        summary = upload_store(open_store(store, ResultsStore, readonly=True), server, batch_size,
                               chosen.value, quiet=quiet, signer=signer)
    except ServerError as e:
        err.print(f"[bold red]failed:[/] {escape(str(e))}; run it again to resume",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    out.print(summary.text(), highlight=False, soft_wrap=True)


def device_pull(
    source: Annotated[str, typer.Option(
        "--from", help="Results server URL (http://host:8080) or a bundle file from "
                       "`bench export --artifacts deploy`.")],
    store: StoreOpt = Path("results"),
    token: TokenOpt = None,
    dataset: DatasetsOpt = None,
    backbone: BackbonesOpt = None,
    method: MethodsOpt = None,
    w_bits: WBitsOpt = None,
    a_bits: ABitsOpt = None,
    cell: Annotated[list[str] | None, typer.Option(help="Only this cell id (repeatable).")]
    = None,
    cells_from: Annotated[list[str] | None, typer.Option(
        "--cells-from", help="Only cells made by this device (repeatable). Default from a "
                             "server: the devices whose public keys it has registered (any "
                             "device where none has one); from a bundle: any.")] = None,
    inputs: Annotated[bool, typer.Option(
        "--inputs/--no-inputs", help="Also bring each cell's test inputs (the test images, "
                                     "of patients on real data, and the deployed predictions) "
                                     "for `bench measure`'s accuracy mode.")] = True,
) -> None:
    """Fetch deployable cells, their ONNX files and test inputs into the store; every file's
    SHA-256 is checked before anything is written. Cells whose files the server lacks are
    skipped (and listed); exit 2 if no cell could be pulled, or while a `bench run` or `bench
    import` is writing to the store. Cell ids follow from the grid, so any device could upload
    a record under another's cell id: say whose cells to take with --cells-from."""
    from bench.exchange.pull import pull
    from bench.store.query import RecordFilter

    selection = RecordFilter(datasets=dataset, backbones=backbone,
                             methods=method, w_bits=w_bits, a_bits=a_bits,
                             cell_ids=cell)
    summary = pull(store, source, selection, token=token, cells_from=cells_from,
                   inputs=inputs)
    for skipped in summary.skipped:
        err.print(f"[yellow]cell skipped:[/] {escape(skipped)}", highlight=False,
                  soft_wrap=True)
    counts = ", ".join(f"{n} {what}" for what, n in summary.result.as_counts().items())
    out.print(f"pulled {summary.cells} deployable cells ({summary.files} files, SHA-256 "
              f"checked) from {summary.source} into {store}: {counts}; cells made by "
              f"{summary.cells_from}", highlight=False, soft_wrap=True)
