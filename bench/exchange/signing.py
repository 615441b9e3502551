"""Ed25519 signatures on what leaves a store: bundle manifests and upload bodies.

Each device (or each person exporting results) has a key pair: `bench keys create` writes the
private key (PKCS#8 PEM, mode 0600) to ``$MEDQ_SIGNING_KEY``, else
``$XDG_CONFIG_HOME/medq-bench/signing-key.pem`` (``~/.config`` when XDG_CONFIG_HOME is unset),
and the public key beside it (`.pub`) as one line: ``ed25519 <base64 of the 32 key bytes>
<name>``. A file of such lines (``#`` starts a comment) is what `bench import --trust` and
`bench serve token create --public-key` read; the name says whose key it is.

A bundle's manifest carries ``{"algorithm": "ed25519", "public_key", "signature"}`` over its
digest (which covers the SHA-256 and size of every member, hence every record and file); an
upload carries the header ``X-Medq-Signature: ed25519 <public key> <signature>`` over the
SHA-256 of its body. A signature proves who sent the bytes only through a key the reader trusts:
a key listed with `--trust`, or registered for the device on the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from bench.errors import UsageError

ALGORITHM = "ed25519"
KEY_ENV = "MEDQ_SIGNING_KEY"
KEY_NAME = "signing-key.pem"
SIGNATURE_HEADER = "X-Medq-Signature"
MANIFEST_CONTEXT = b"medq-bench bundle manifest\n"
UPLOAD_CONTEXT = b"medq-bench upload body\n"
"""Prefixes of what is signed, so a signature over one kind of message never passes for
another."""
KEY_BYTES = 32
SIGNATURE_BYTES = 64


class SignatureError(UsageError):
    """A signature is malformed, does not verify, or is missing where one is required."""


def _b64decode(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise SignatureError(f"{what} is not base64") from err
    if len(raw) != size:
        raise SignatureError(f"{what} has {len(raw)} bytes, not {size}")
    return raw


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key and the name it was given (who holds its private key)."""

    raw: bytes
    name: str = ""

    @classmethod
    def from_text(cls, text: str, name: str = "") -> PublicKey:
        return cls(_b64decode(text, KEY_BYTES, "the public key"), name)

    @property
    def text(self) -> str:
        return base64.b64encode(self.raw).decode()

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the SHA-256 of the key's bytes."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def line(self) -> str:
        return f"{ALGORITHM} {self.text} {self.name}".rstrip()

    def describe(self) -> str:
        return f"{self.name} (key {self.fingerprint})" if self.name else f"key {self.fingerprint}"

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """A private key in memory, with its public key."""

    def __init__(self, private: Ed25519PrivateKey, name: str = "") -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        self.public = PublicKey(raw, name)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def key_path() -> Path:
    """Where the private signing key lives (see the module's docstring)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "medq-bench" / KEY_NAME


def public_path(private: Path) -> Path:
    return private.with_suffix(".pub")


def create_key(name: str, path: Path | None = None, force: bool = False) -> tuple[Path, PublicKey]:
    """A new key pair: the private key at ``path`` (default `key_path()`, mode 0600, its folder
    0700 if made), the public key line beside it. UsageError if a key is there, unless
    ``force``."""
    path = path or key_path()
    if path.exists() and not force:
        raise UsageError(f"a signing key exists at {path}; keep it (its public key: "
                         f"{public_path(path)}) or pass --force to replace it (devices and "
                         "servers that trust the old key will refuse what the new one signs)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    partial = path.with_name(f".{path.name}.part")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    partial.replace(path)
    public = Signer(private, name).public
    public_path(path).write_text(public.line() + "\n")
    return path, public


def load_signer(path: Path | None = None) -> Signer | None:
    """The signing key at ``path`` (default `key_path()`), None if there is none. UsageError if
    others may read it or it is not an Ed25519 private key."""
    path = path or key_path()
    if not path.is_file():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UsageError(f"the signing key {path} may be read by others (mode {mode:04o}): "
                         f"chmod 600 {path}")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{path} is not a readable private key ({err})") from err
    if not isinstance(private, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 private key")
    name = ""
    if public_path(path).is_file():
        keys = parse_public_keys(public_path(path).read_text(), str(public_path(path)))
        name = keys[0].name if keys else ""
    return Signer(private, name)


def parse_public_keys(text: str, source: str) -> list[PublicKey]:
    """The keys of a public-key file: lines ``ed25519 <base64> [name]``; UsageError naming the
    line of a bad one."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=2)
        if parts[0] != ALGORITHM or len(parts) < 2:
            raise UsageError(f"{source} line {number}: expected `{ALGORITHM} <base64 public key> "
                             "[name]` (the .pub file `bench keys create` writes)")
        try:
            keys.append(PublicKey.from_text(parts[1], parts[2] if len(parts) > 2 else ""))
        except SignatureError as err:
            raise UsageError(f"{source} line {number}: {err}") from err
    return keys


def read_public_keys(paths: list[Path]) -> list[PublicKey]:
    """Every key of the public-key files ``paths``; UsageError if a file is missing or holds
    none."""
    keys: list[PublicKey] = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"no public-key file at {path}")
        found = parse_public_keys(path.read_text(), str(path))
        if not found:
            raise UsageError(f"{path} holds no public key")
        keys.extend(found)
    return keys


def sign_manifest(signer: Signer, digest: str) -> dict[str, str]:
    """The `signature` entry of a manifest whose digest is ``digest``."""
    signature = signer.sign(MANIFEST_CONTEXT + digest.encode())
    return {"algorithm": ALGORITHM, "public_key": signer.public.text,
            "signature": base64.b64encode(signature).decode()}


def verify_manifest(entry: dict[str, str], digest: str) -> PublicKey:
    """The key that made the manifest's `signature` entry over ``digest``; SignatureError if it
    does not verify."""
    key = PublicKey.from_text(entry["public_key"])
    signature = _b64decode(entry["signature"], SIGNATURE_BYTES, "the signature")
    if not key.verifies(signature, MANIFEST_CONTEXT + digest.encode()):
        raise SignatureError(f"the manifest's signature does not verify with the key it names "
                             f"({key.fingerprint}): the bundle was changed after it was signed")
    return key


def _body_message(body: bytes) -> bytes:
    return UPLOAD_CONTEXT + hashlib.sha256(body).hexdigest().encode()


def sign_upload(signer: Signer, body: bytes) -> str:
    """The `X-Medq-Signature` header value for an upload of ``body``."""
    signature = base64.b64encode(signer.sign(_body_message(body))).decode()
    return f"{ALGORITHM} {signer.public.text} {signature}"


def verify_upload(header: str, body: bytes) -> PublicKey:
    """The key that signed ``body`` per its `X-Medq-Signature` header; SignatureError if the
    header is malformed or the signature does not verify."""
    parts = header.split()
    if len(parts) != 3 or parts[0] != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_HEADER} must be `{ALGORITHM} <public key> "
                             "<signature>` (base64)")
    key = PublicKey.from_text(parts[1])
    if not key.verifies(_b64decode(parts[2], SIGNATURE_BYTES, "the signature"),
                        _body_message(body)):
        raise SignatureError(f"the upload's signature does not verify with key "
                             f"{key.fingerprint}: the body was changed after it was signed")
    return key
