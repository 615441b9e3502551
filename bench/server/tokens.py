"""Per-device API tokens: made once, printed once, stored only as their SHA-256.

A token is `medq_` plus 32 random bytes (URL-safe base64). Looking a token up by the hash of
what the client sent compares hashes inside the database's unique index, never the secret
itself, and a token is never logged or stored. A token may carry the device's Ed25519 public key
(`bench serve token create --public-key FILE`): the key is then the device's, and the server
accepts only uploads signed by one of the device's keys. Revoking the token does not drop the
key (a new token without one would otherwise end the signing requirement by accident); only
`--allow-unsigned` on a new token does.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from bench.errors import UsageError
from bench.exchange.signing import PublicKey
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
    key: str | None = None
    """The fingerprint of the token's public key, if it has one."""


def utc_now() -> datetime:
    """Naive UTC, as the store keeps times."""
    return datetime.now(UTC).replace(tzinfo=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, device: str, label: str = "",
                 public_key: PublicKey | None = None, allow_unsigned: bool = False
                 ) -> tuple[int, str]:
    """A new token for ``device`` (named in `devices` if new), with the device's public key if
    given; ``allow_unsigned`` first drops the device's registered keys, so that its uploads
    need no signature (until a key is registered again). Returns (id, token text)."""
    if not valid_device(device):
        raise UsageError(f"invalid device name {device!r} (must match {DEVICE_PATTERN})")
    if len(label) > 128:
        raise UsageError("a token label is at most 128 characters")
    if allow_unsigned and public_key is not None:
        raise UsageError("--allow-unsigned drops the device's keys; it cannot register one")
    token = PREFIX + secrets.token_urlsafe(32)
    now = utc_now()
    with Session(engine) as session, session.begin():
        known = session.get(DeviceRecord, device)
        if known is None:
            known = DeviceRecord(name=device, created_at=now)
            session.add(known)
        if allow_unsigned:
            known.keys_dropped_at = now
        row = ApiToken(device=device, token_hash=hash_token(token), created_at=now, label=label,
                       public_key=public_key.text if public_key is not None else None)
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


def device_keys(session: Session, device: str) -> list[PublicKey]:
    """``device``'s public keys (named after it): those of its tokens, revoked ones too, made
    after its keys were last dropped (`--allow-unsigned`)."""
    dropped = session.scalar(select(DeviceRecord.keys_dropped_at).where(
        DeviceRecord.name == device))
    query = select(ApiToken.public_key).where(ApiToken.device == device,
                                              ApiToken.public_key.is_not(None))
    if dropped is not None:
        query = query.where(ApiToken.created_at > dropped)
    texts = sorted(set(session.scalars(query)))
    return [PublicKey.from_text(text, device) for text in texts]


def _info(row: ApiToken) -> TokenInfo:
    key = PublicKey.from_text(row.public_key).fingerprint if row.public_key else None
    return TokenInfo(row.id, row.device, row.label, row.created_at, row.revoked_at, key)
