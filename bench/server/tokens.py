"""Per-device API tokens: made once, printed once, stored only as their SHA-256.

A token is `medq_` plus 32 random bytes (URL-safe base64). Looking a token up by the hash of
what the client sent compares hashes inside the database's unique index, never the secret
itself, and a token is never logged or stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from bench.errors import UsageError
from bench.server.tables import ApiToken, DeviceRecord
from bench.store.identity import DEVICE_PATTERN, valid_device

PREFIX = "medq_"


@dataclass(frozen=True)
class TokenInfo:
    """A token's row, without anything secret."""

    id: int
    device: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


def utc_now() -> datetime:
    """Naive UTC, as the store keeps times."""
    return datetime.now(UTC).replace(tzinfo=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, device: str, label: str = "") -> tuple[int, str]:
    """A new token for ``device`` (named in `devices` if new); returns (id, token text)."""
    if not valid_device(device):
        raise UsageError(f"invalid device name {device!r} (must match {DEVICE_PATTERN})")
    if len(label) > 128:
        raise UsageError("a token label is at most 128 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    now = utc_now()
    with Session(engine) as session, session.begin():
        if session.get(DeviceRecord, device) is None:
            session.add(DeviceRecord(name=device, created_at=now))
        row = ApiToken(device=device, token_hash=hash_token(token), created_at=now, label=label)
        session.add(row)
        session.flush()
        return row.id, token


def revoke_token(engine: Engine, token_id: int) -> TokenInfo:
    """Revoke a token by id (revoking it again changes nothing)."""
    with Session(engine) as session, session.begin():
        row = session.get(ApiToken, token_id)
        if row is None:
            raise UsageError(f"no token with id {token_id}")
        if row.revoked_at is None:
            row.revoked_at = utc_now()
        return _info(row)


def list_tokens(engine: Engine) -> list[TokenInfo]:
    with Session(engine) as session:
        return [_info(row) for row in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def device_for(session: Session, token: str) -> str | None:
    """The device of a valid, unrevoked ``token``; None otherwise."""
    return session.scalar(select(ApiToken.device).where(
        ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)))


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.device, row.label, row.created_at, row.revoked_at)
