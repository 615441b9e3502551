"""`manifest.json` of a bundle: what it holds, the SHA-256 of every other member, and a digest
of itself, written in one canonical form so that any edited byte is noticed."""

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
from bench.store.records import HASH_PATTERN

FORMAT = "medq-bundle"
VERSION = 1
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


class Counts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    cells: int = Field(ge=0)
    measurements: int = Field(ge=0)


class Manifest(BaseModel):
    """`manifest.json`: what the bundle holds and the SHA-256 of each member but itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal["medq-bundle"]
    version: Literal[1]
    created_at: datetime
    source: dict[str, str]
    filters: dict[str, Any]
    counts: Counts
    files: dict[MemberName, Sha256]
    digest: Sha256

    @model_validator(mode="after")
    def _has_records(self) -> Manifest:
        missing = {CELLS, MEASUREMENTS} - self.files.keys()
        if missing:
            raise ValueError(f"files lacks {', '.join(sorted(missing))}")
        return self


def _digest(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _manifest_text(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=1) + "\n").encode()


def seal(document: dict[str, Any]) -> bytes:
    """The bytes of `manifest.json` for ``document``, with its digest filled in."""
    return _manifest_text({**document, "digest": _digest(document)})


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
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"not a medq-bench bundle (manifest format {found!r})")
    if document.get("version") != VERSION or isinstance(document.get("version"), bool):
        raise BundleError(f"bundle version {document.get('version')!r} is not supported; "
                          f"this medq-bench reads version {VERSION}")
    if raw != _manifest_text(document) or document.get("digest") != _digest(document):
        raise BundleError(f"{MANIFEST} was edited: it is not what bench export wrote")
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as err:
        raise BundleError(f"{MANIFEST} is invalid: {first_error(err)}") from err
