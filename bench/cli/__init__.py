"""The `bench` command: verbs parse their flags, call one function and print.

Every verb is registered here, from one module per group of verbs; `bench.cli.exits` turns
what they raise into exit codes. Exit codes: 0 success; 1 some cells failed; 2 bad usage,
configuration or input data.
"""

from __future__ import annotations

import typer

from bench.cli import exchange, keys, listings, measure, results, run, serve
from bench.cli.exits import Bench, Verbs, exits_on_usage_error

__all__ = ["app", "exits_on_usage_error"]

app = typer.Typer(cls=Bench, add_completion=False, no_args_is_help=True,
                  help="medq-bench: benchmark quantised, interpretable medical image classifiers.")
for verb in (run.run, results.results, results.report, measure.measure, listings.profiles,
             listings.datasets, listings.backbones, listings.methods, exchange.export):
    app.command()(verb)
app.command("import")(exchange.import_)
app.command()(exchange.upload)
app.command()(results.compare)

keys_app = typer.Typer(cls=Verbs, no_args_is_help=True,
                       help="This machine's Ed25519 signing key: `bench export` and `bench "
                            "upload` sign with it.")
keys_app.command("create")(keys.keys_create)
keys_app.command("show")(keys.keys_show)
app.add_typer(keys_app, name="keys")

serve_app = typer.Typer(cls=Verbs, help="Run the results server; `bench serve token ...` "
                                        "manages its API tokens.")
serve_app.callback(invoke_without_command=True)(serve.serve)
token_app = typer.Typer(cls=Verbs, no_args_is_help=True,
                        help="Per-device API tokens of a results server.")
token_app.command("create")(serve.serve_token_create)
token_app.command("revoke")(serve.serve_token_revoke)
token_app.command("list")(serve.serve_token_list)
serve_app.add_typer(token_app, name="token")
app.add_typer(serve_app, name="serve")

device_app = typer.Typer(cls=Verbs, no_args_is_help=True,
                         help="On a measuring device: fetch deployable cells (then `bench "
                              "measure`, `bench upload`).")
device_app.command("pull")(exchange.device_pull)
app.add_typer(device_app, name="device")
