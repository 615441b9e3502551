"""`bench serve`: the results server, and `bench serve token ...` for its API tokens."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bench.cli.common import err, out
from bench.errors import UsageError

DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Database URL: sqlite:///PATH or postgresql://USER@HOST/DB "
                 "(default: medq.sqlite in --data).")]
DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="Server data folder for artifacts (default: the SQLite file's folder, "
                   "else ./medq-server).")]


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
    max_staging_mb: Annotated[float, typer.Option(
        min=1.0, help="Disk that bundle uploads being unpacked at once may take together, in "
                      "MiB (an upload that would pass it: 503, retry).")] = 8192.0,
) -> None:
    """Serve the results API, the HTML report and uploads for devices with tokens."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"--db": db, "--data": data}
        return
    from bench.server.app import serve as run_server
    from bench.server.settings import ServerSettings

    settings = ServerSettings.of(db, data, host=host, port=port, private_reads=private_reads,
                                 max_body_mb=max_body_mb, max_staging_mb=max_staging_mb)
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


def serve_token_create(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="The device whose records the token may write.")],
    label: Annotated[str, typer.Option(help="A note to tell tokens apart.")] = "",
    public_key: Annotated[Path | None, typer.Option(
        help="The device's public key (the `.pub` file of `bench keys create` on it): its "
             "uploads must then be signed by that key.")] = None,
    allow_unsigned: Annotated[bool, typer.Option(
        "--allow-unsigned", help="Drop the device's registered public keys: its uploads need "
                                 "no signature until a key is registered again. (Keys stay "
                                 "the device's when their token is revoked.)")] = False,
    db: DbOpt = None,
    data: DataOpt = None,
) -> None:
    """Make a token for a device and print it; only its hash is stored, so copy it now."""
    from sqlalchemy.orm import Session

    from bench.exchange.signing import read_public_keys
    from bench.server.tokens import create_token, device_keys

    key = None
    if public_key is not None:
        keys = read_public_keys([public_key])
        if len(keys) != 1:
            raise UsageError(f"{public_key} holds {len(keys)} public keys; give a file with "
                             "the device's one key")
        key = keys[0]
    engine = server_engine(ctx, db, data)
    token_id, token = create_token(engine, device, label, key, allow_unsigned)
    with Session(engine) as session:
        keys = device_keys(session, device)
    signed = (f", uploads must be signed by key {' or '.join(k.fingerprint for k in keys)}"
              if keys else ", uploads need no signature (the device has no registered key)")
    err.print(f"token {token_id} for device {device}{signed} (shown once; store it safely):",
              highlight=False)
    sys.stdout.write(token + "\n")


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
