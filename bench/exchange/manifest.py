"""`manifest.json` of a bundle: what it holds, the SHA-256 and size of every other member, the
devices of its records, a digest of itself and, when the exporter has a signing key, an Ed25519
signature of that digest; written in one canonical form so that any edited byte is noticed.

Version 2 (written since signatures) adds `sizes`, `devices` and `signature`; version 1 bundles
are still read.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from bench.errors import UsageError
from bench.exchange.signing import (
    PublicKey,
    SignatureError,
    Signer,
    sign_manifest,
    verify_manifest,
)
from bench.store.identity import DEVICE_PATTERN
from bench.store.records import HASH_PATTERN

FORMAT = "medq-bundle"
VERSION = 2
VERSIONS = (1, 2)
TOP = "medq-bundle"
MANIFEST = "manifest.json"
CELLS = "records/cells.jsonl"
MEASUREMENTS = "records/measurements.jsonl"
MAX_MANIFEST_BYTES = 64 << 20

_SAFE_PATH = r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*"
_MEMBER_PATTERN = (rf"^(records/(cells|measurements)\.jsonl|artifacts/[0-9A-Za-z_-]{{1,32}}/"
                   rf"{_SAFE_PATH})$")


class BundleError(UsageError):
    """A bundle that cannot be read or fails a check; nothing of it has been imported."""


def _plain_parts(name: str) -> str:
    if any(part in (".", "..") for part in name.split("/")):
        raise ValueError("'.' and '..' are not allowed in a path")
    return name


MemberName = Annotated[str, StringConstraints(pattern=_MEMBER_PATTERN, max_length=300),
                       AfterValidator(_plain_parts)]
Sha256 = Annotated[str, StringConstraints(pattern=HASH_PATTERN)]
Base64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]+={0,2}$", max_length=200)]


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    cells: int = Field(ge=0)
    measurements: int = Field(ge=0)


class Signature(BaseModel):
    """An Ed25519 signature of the manifest's digest, with the public key that made it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    algorithm: Literal["ed25519"]
    public_key: Base64
    signature: Base64


class Manifest(BaseModel):
    """`manifest.json`: what the bundle holds, the SHA-256 (and, from version 2, the size) of
    each member but itself, the devices of its records, and its signature if signed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["medq-bundle"]
    version: Literal[1, 2]
    created_at: datetime
    source: dict[str, str]
    filters: dict[str, Any]
    counts: Counts
    files: dict[MemberName, Sha256]
    sizes: dict[MemberName, Annotated[int, Field(ge=0)]] | None = None
    devices: list[Annotated[str, StringConstraints(pattern=DEVICE_PATTERN)]] | None = None
    digest: Sha256
    signature: Signature | None = None

    @model_validator(mode="after")
    def _has_records(self) -> Manifest:
        missing = {CELLS, MEASUREMENTS} - self.files.keys()
        if missing:
            raise ValueError(f"files lacks {', '.join(sorted(missing))}")
        if self.version >= 2 and (self.sizes is None or self.devices is None):
            raise ValueError("a version 2 manifest declares sizes and devices")
        if self.sizes is not None and self.sizes.keys() != self.files.keys():
            raise ValueError("sizes must list exactly the members that files lists")
        return self

    def declared_bytes(self) -> int | None:
        """What the members other than the manifest unpack to, if the manifest says."""
        return None if self.sizes is None else sum(self.sizes.values())

    def signer(self) -> PublicKey | None:
        """The key whose signature the manifest carries (checked when it was parsed)."""
        return None if self.signature is None else PublicKey.from_text(
            self.signature.public_key)


def _digest(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k not in ("digest", "signature")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _manifest_text(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=1) + "\n").encode()


def seal(document: dict[str, Any], signer: Signer | None = None) -> bytes:
    """The bytes of `manifest.json` for ``document``, with its digest filled in (and its
    signature, with ``signer``)."""
    body = {k: v for k, v in document.items() if k not in ("digest", "signature")}
    digest = _digest(body)
    sealed = {**body, "digest": digest}
    if signer is not None:
        sealed["signature"] = sign_manifest(signer, digest)
    return _manifest_text(sealed)


def first_error(err: ValidationError) -> str:
    """The first problem of a validation error, on one line."""
    e = err.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in ``raw``, refused if it is not of this format and version or if any byte
    differs from what `seal` wrote."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(raw)
    except ValueError as err:
        raise BundleError(f"{MANIFEST} is not valid JSON ({err})") from err
    except RecursionError as err:
        raise BundleError(f"{MANIFEST} is nested too deeply to be a bundle's manifest") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"not a medq-bench bundle (manifest format {found!r})")
    version = document.get("version")
    if version not in VERSIONS or isinstance(version, bool):
        raise BundleError(f"bundle version {version!r} is not supported; this medq-bench "
                          f"reads versions {', '.join(map(str, VERSIONS))}")
    if raw != _manifest_text(document) or document.get("digest") != _digest(document):
        raise BundleError(f"{MANIFEST} was edited: it is not what bench export wrote")
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as err:
        raise BundleError(f"{MANIFEST} is invalid: {first_error(err)}") from err
    if manifest.signature is not None:
        try:
            verify_manifest(manifest.signature.model_dump(), manifest.digest)
        except SignatureError as err:
            raise BundleError(str(err)) from err
    return manifest


def check_trust(manifest: Manifest, trust: list[PublicKey] | None) -> tuple[PublicKey | None,
                                                                            bool]:
    """The manifest's signer (named after its trusted key when it is one) and whether the
    signature is verified against ``trust``. With ``trust`` (a list, maybe empty) an unsigned
    bundle, or one signed by a key it does not list, is refused."""
    signer = manifest.signer()
    if trust is None:
        return signer, False
    if signer is None:
        raise BundleError("the bundle is not signed; with --trust only bundles signed by a "
                          "trusted key are imported")
    for key in trust:
        if key.raw == signer.raw:
            return key, True
    raise BundleError(f"the bundle is signed by key {signer.fingerprint}, which --trust does "
                      "not list; nothing was imported")
