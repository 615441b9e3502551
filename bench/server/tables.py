"""The server's tables, on the store's metadata (migration 0003 creates them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bench.store.schema import Base


class ApiToken(Base):
    """A device's API token, stored only as the SHA-256 of the token text, with the device's
    Ed25519 public key (base64) when one was registered: its uploads must then be signed."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    label: Mapped[str] = mapped_column(String(128), default="")
    public_key: Mapped[str | None] = mapped_column(String(64))


class DeviceRecord(Base):
    """A device known to the server: named when its first token is made. Its public keys are
    those of its tokens (revoked ones too) made after ``keys_dropped_at`` (migration 0005)."""

    __tablename__ = "devices"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_upload_at: Mapped[datetime | None] = mapped_column(DateTime)
    keys_dropped_at: Mapped[datetime | None] = mapped_column(DateTime)


class UploadRecord(Base):
    """One acknowledged upload: who sent it, the SHA-256 of its body and what it changed."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
