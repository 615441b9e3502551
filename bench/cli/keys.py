"""`bench keys`: this machine's signing key, which `bench export` and `bench upload` sign with."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bench.cli.common import err
from bench.errors import UsageError


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


def keys_show() -> None:
    """Print this machine's public key line (and where the key is)."""
    from bench.exchange.signing import key_path, load_signer

    signer = load_signer()
    if signer is None:
        raise UsageError(f"no signing key at {key_path()} (`bench keys create` makes one)")
    err.print(f"key {signer.public.fingerprint} at {key_path()}", highlight=False)
    sys.stdout.write(signer.public.line() + "\n")
