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
from rich.markup import escape
from rich.table import Table

from bench.errors import UsageError
from bench.extras import DISTRIBUTION, extra_for

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="medq-bench: benchmark quantised, interpretable medical image classifiers.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

StoreOpt = Annotated[Path, typer.Option("--store", help="Results store folder.")]
DatasetsOpt = Annotated[list[str] | None, typer.Option(help="Only this data set (repeatable).")]
BackbonesOpt = Annotated[list[str] | None, typer.Option(help="Only this backbone (repeatable).")]
MethodsOpt = Annotated[list[str] | None, typer.Option(help="Only this method (repeatable).")]
WBitsOpt = Annotated[list[int] | None, typer.Option(help="Only these weight bits.")]
ABitsOpt = Annotated[list[int] | None, typer.Option(help="Only these activation bits.")]


def exits_on_usage_error(fn: F) -> F:
    """Print a UsageError (bad usage, config or data), or the extra a verb needs on a lighter
    install (a module that only that extra installs is missing), and exit with 2. The verb is
    named after the function (`device_pull` -> `bench device pull`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from e
        except ModuleNotFoundError as e:
            module = (e.name or "").partition(".")[0]
            extra = extra_for(module)
            if extra is None:
                raise
            verb = fn.__name__.rstrip("_").replace("_", " ")
            message = (f"bench {verb} needs the {extra} install: "
                       f"pip install '{DISTRIBUTION}[{extra}]' (missing: {module})")
            err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
    backbone: BackbonesOpt = None,
    method: MethodsOpt = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Use seeds 0..N-1.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of every training phase.")]
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
    from bench.runner import Overrides, RunOptions, executor_for, plan_grid, run_plan
    from bench.store.identity import local_device

    try:
        local_device()
    except ValueError as e:
        raise UsageError(str(e)) from e
    options = RunOptions(grid, store, Overrides(dataset, data_root, tuple(backbone or ()),
                                                tuple(method or ()), seeds, epochs),
                         device.value, fail_fast, quiet, executor, workers, address)
    chosen = executor_for(options)
    buffer = logs.start_buffer()
    plan = plan_grid(options, allow_missing_data=dry_run)
    if dry_run:
        todo = print_plan(plan, store, chosen)
        if estimate:
            print_estimate(plan, todo, chosen)
        return
    log_paths: list[Path] = []
    summary = run_plan(plan, options,
                       locked=lambda log_dir: log_paths.append(logs.to_file(buffer, log_dir)))
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
        (out if out.is_terminal else Console(width=250)).print(table)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def open_store(store: Path, cls: Any, readonly: bool = False) -> Any:
    """The store at ``store`` (it must exist); ``readonly`` for verbs that only read it."""
    from bench.store.database import DB_NAME

    if not (store / DB_NAME).exists():
        raise UsageError(f"no results store at {store} (run `bench run --store {store}` first)")
    return cls(store, readonly=readonly)


class ReportFormat(StrEnum):
    html = "html"
    md = "md"
    csv = "csv"
    json = "json"
    latex = "latex"


class ReportTable(StrEnum):
    headline = "headline"
    main = "main"


@app.command()
@exits_on_usage_error
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


@app.command()
@exits_on_usage_error
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
                            batch_size=batch_size, device=device_name, quiet=quiet)
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
@exits_on_usage_error
def datasets() -> None:
    """List the data sets."""
    from bench.data import DATASETS

    listing("data set", {n: d.description + (" [masks]" if d.has_masks else "")
                         for n, d in DATASETS.items()})


@app.command()
@exits_on_usage_error
def backbones() -> None:
    """List the backbones."""
    from bench.models import BACKBONES

    listing("backbone", {n: b.description for n, b in BACKBONES.items()})


@app.command()
@exits_on_usage_error
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


class ArtifactChoice(StrEnum):
    none = "none"
    deploy = "deploy"
    all = "all"


@app.command()
@exits_on_usage_error
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


@app.command("import")
@exits_on_usage_error
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


TokenOpt = Annotated[str | None, typer.Option(
    envvar="MEDQ_TOKEN", help="API token (default: $MEDQ_TOKEN).")]


@app.command()
@exits_on_usage_error
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


@app.command()
@exits_on_usage_error
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
    (out if out.is_terminal else Console(width=250)).print(table)
    if not rows:
        out.print("no cell is measured on these devices", highlight=False)


keys_app = typer.Typer(no_args_is_help=True,
                       help="This machine's Ed25519 signing key: `bench export` and `bench "
                            "upload` sign with it.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@exits_on_usage_error
def keys_create(
    name: Annotated[str | None, typer.Option(
        help="Whose key it is, written with the public key (default: this device's name).")]
    = None,
    force: Annotated[bool, typer.Option(help="Replace an existing key.")] = False,
) -> None:
    """Make a key pair: the private key (mode 0600) in the config folder ($MEDQ_SIGNING_KEY,
    else $XDG_CONFIG_HOME/medq-bench/signing-key.pem), the public key beside it (.pub); prints
    the public key line to give to servers and importers."""
    from bench.exchange.signing import create_key, public_path
    from bench.store.identity import local_device

    try:
        owner = name or local_device()
    except ValueError as e:
        raise UsageError(str(e)) from e
    path, public = create_key(owner, force=force)
    err.print(f"private key {path} (mode 0600: keep it secret); public key "
              f"{public_path(path)} (key {public.fingerprint}): register it with `bench serve "
              "token create --device NAME --public-key FILE`, or give it to `bench import "
              "--trust`", highlight=False, soft_wrap=True)
    sys.stdout.write(public.line() + "\n")


@keys_app.command("show")
@exits_on_usage_error
def keys_show() -> None:
    """Print this machine's public key line (and where the key is)."""
    from bench.exchange.signing import key_path, load_signer

    signer = load_signer()
    if signer is None:
        raise UsageError(f"no signing key at {key_path()} (`bench keys create` makes one)")
    err.print(f"key {signer.public.fingerprint} at {key_path()}", highlight=False)
    sys.stdout.write(signer.public.line() + "\n")


serve_app = typer.Typer(help="Run the results server; `bench serve token ...` manages its "
                             "API tokens.")
token_app = typer.Typer(no_args_is_help=True, help="Per-device API tokens of a results server.")
serve_app.add_typer(token_app, name="token")
app.add_typer(serve_app, name="serve")

DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Database URL: sqlite:///PATH or postgresql://USER@HOST/DB "
                 "(default: medq.sqlite in --data).")]
DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="Server data folder for artifacts (default: the SQLite file's folder, "
                   "else ./medq-server).")]


@serve_app.callback(invoke_without_command=True)
@exits_on_usage_error
def serve(
    ctx: typer.Context,
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    data: DataOpt = None,
    private_reads: Annotated[bool, typer.Option(
        "--private-reads", help="Reads need a valid token too. By default reads are public: "
                                "anyone who reaches the server reads its records, devices, "
                                "artifacts and report.")] = False,
    max_body_mb: Annotated[float, typer.Option(
        min=0.001, help="Largest request body accepted, in MiB (larger: 413).")] = 256.0,
) -> None:
    """Serve the results API, the HTML report and uploads for devices with tokens."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"--db": db, "--data": data}
        return
    from bench.server.app import serve as run_server
    from bench.server.settings import ServerSettings

    settings = ServerSettings.of(db, data, host=host, port=port, private_reads=private_reads,
                                 max_body_mb=max_body_mb)
    err.print(settings.read_policy(), highlight=False, soft_wrap=True)
    run_server(settings)


def server_engine(ctx: typer.Context, db: str | None, data: Path | None) -> Any:
    """The server database's engine (created and migrated if new), from the token verb's
    `--db`/`--data` or else those given to `bench serve`."""
    from bench.server.settings import ServerSettings
    from bench.store import ResultsStore

    given = ctx.obj if isinstance(ctx.obj, dict) else {}
    settings = ServerSettings.of(_serve_option("--db", given.get("--db"), db),
                                 _serve_option("--data", given.get("--data"), data))
    return ResultsStore(settings.data_dir, settings.db_url).engine


def _serve_option(flag: str, outer: Any, inner: Any) -> Any:
    """The token verb's value of ``flag``, else `bench serve`'s; both and different: refused."""
    if outer is not None and inner is not None and outer != inner:
        raise UsageError(f"{flag} given twice with different values: {outer} (to bench serve) "
                         f"and {inner} (to the token command)")
    return inner if inner is not None else outer


@token_app.command("create")
@exits_on_usage_error
def serve_token_create(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="The device whose records the token may write.")],
    label: Annotated[str, typer.Option(help="A note to tell tokens apart.")] = "",
    public_key: Annotated[Path | None, typer.Option(
        help="The device's public key (the `.pub` file of `bench keys create` on it): its "
             "uploads must then be signed by that key.")] = None,
    db: DbOpt = None,
    data: DataOpt = None,
) -> None:
    """Make a token for a device and print it; only its hash is stored, so copy it now."""
    from bench.exchange.signing import read_public_keys
    from bench.server.tokens import create_token

    key = None
    if public_key is not None:
        keys = read_public_keys([public_key])
        if len(keys) != 1:
            raise UsageError(f"{public_key} holds {len(keys)} public keys; give a file with "
                             "the device's one key")
        key = keys[0]
    token_id, token = create_token(server_engine(ctx, db, data), device, label, key)
    signed = f", uploads must be signed by key {key.fingerprint}" if key else ""
    err.print(f"token {token_id} for device {device}{signed} (shown once; store it safely):",
              highlight=False)
    sys.stdout.write(token + "\n")


@token_app.command("revoke")
@exits_on_usage_error
def serve_token_revoke(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(help="Token id (see `bench serve token list`).")],
    db: DbOpt = None,
    data: DataOpt = None,
) -> None:
    """Revoke a token: requests with it get 401 from now on."""
    from bench.server.tokens import revoke_token

    info = revoke_token(server_engine(ctx, db, data), token_id)
    out.print(f"token {info.id} of device {info.device} revoked "
              f"({info.revoked_at:%Y-%m-%d %H:%M:%S} UTC)", highlight=False)


@token_app.command("list")
@exits_on_usage_error
def serve_token_list(ctx: typer.Context, db: DbOpt = None, data: DataOpt = None) -> None:
    """List the tokens (ids, devices, labels, dates; never the tokens themselves)."""
    from bench.server.tokens import list_tokens

    table = Table()
    for column in ("id", "device", "label", "created (UTC)", "revoked (UTC)", "public key"):
        table.add_column(column)
    for info in list_tokens(server_engine(ctx, db, data)):
        table.add_row(str(info.id), info.device, info.label, f"{info.created_at:%Y-%m-%d %H:%M}",
                      f"{info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "-",
                      info.key or "-")
    out.print(table)


device_app = typer.Typer(no_args_is_help=True,
                         help="On a measuring device: fetch deployable cells (then `bench "
                              "measure`, `bench upload`).")
app.add_typer(device_app, name="device")


@device_app.command("pull")
@exits_on_usage_error
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
) -> None:
    """Fetch deployable cells and their ONNX files into the store; every file's SHA-256 is
    checked before anything is written. Cells whose files the server lacks are skipped (and
    listed); exit 2 if no cell could be pulled, or while a `bench run` or `bench import` is
    writing to the store."""
    from bench.exchange.pull import pull
    from bench.store import ResultsStore
    from bench.store.query import RecordFilter

    selection = RecordFilter(datasets=dataset, backbones=backbone,
                             methods=method, w_bits=w_bits, a_bits=a_bits,
                             cell_ids=cell)
    summary = pull(ResultsStore(store), source, selection, token=token)
    for skipped in summary.skipped:
        err.print(f"[yellow]cell skipped:[/] {escape(skipped)}", highlight=False,
                  soft_wrap=True)
    counts = ", ".join(f"{n} {what}" for what, n in summary.result.as_counts().items())
    out.print(f"pulled {summary.cells} deployable cells ({summary.files} files, SHA-256 "
              f"checked) from {summary.source} into {store}: {counts}", highlight=False,
              soft_wrap=True)


if __name__ == "__main__":
    app()
