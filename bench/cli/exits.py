"""Exit code 2 for bad usage, in one place: the `bench` group maps what any verb raises.

A UsageError (bad usage, configuration or input data) prints ``error: <message>``; a missing
module that only an extra installs names the verb and the extra, e.g. ``bench device pull needs
the device install: pip install 'medq-bench[device]' (missing: psutil)``. Both exit with 2; any
other error propagates. The verb is the command path as typed, recorded while Typer resolves
it, so sub-app verbs and errors raised in a group's callback are named too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from bench.cli.common import err
from bench.errors import UsageError
from bench.extras import DISTRIBUTION, extra_for

F = TypeVar("F", bound=Callable[..., Any])
VERB = "bench.verb"  # ctx.meta key (shared by nested contexts): the verb's words so far


def usage_exit(error: BaseException, verb: str) -> typer.Exit | None:
    """Print ``error`` raised by `bench <verb>` and return the exit (code 2) to raise, if it is
    a UsageError or a missing module that an extra installs; None for anything else."""
    if isinstance(error, UsageError):
        message = str(error)
    elif isinstance(error, ModuleNotFoundError) and \
            (extra := extra_for(module := (error.name or "").partition(".")[0])) is not None:
        message = (f"bench {verb} needs the {extra} install: "
                   f"pip install '{DISTRIBUTION}[{extra}]' (missing: {module})")
    else:
        return None
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


class Verbs(TyperGroup):
    """A group of `bench` verbs (the app, or a sub-app such as `bench serve token`): records
    the verb it resolves, so that an error names the whole command."""

    def resolve_command(self, ctx: typer.Context, args: list[str]
                        ) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            ctx.meta[VERB] = [*ctx.meta.get(VERB, ()), name]
        return name, command, rest


class Bench(Verbs):
    """The `bench` app: turns what any of its verbs raises into an exit with `usage_exit`."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UsageError, ModuleNotFoundError) as error:
            if (exit_ := usage_exit(error, " ".join(ctx.meta.get(VERB, ())))) is None:
                raise
            raise exit_ from error


def exits_on_usage_error(fn: F) -> F:
    """``fn`` exiting as a `bench` verb does, for a function called on its own (the app's verbs
    need no decorator); the verb is named after the function (`device_pull` -> `bench device
    pull`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UsageError, ModuleNotFoundError) as error:
            if (exit_ := usage_exit(error, fn.__name__.rstrip("_").replace("_", " "))) is None:
                raise
            raise exit_ from error
    return wrapper  # type: ignore[return-value]
