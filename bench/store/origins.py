"""Per device, where the store's records came from and whether their signatures were verified
(the report's provenance), and how many records were replaced (the audit table)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from bench.store.schema import CellRecord, MeasurementRecord, RecordOrigin, RecordReplacement

LOCAL = "made in this store"
UNSIGNED = "unsigned"
UNVERIFIED = "signed, not verified"


@dataclass
class DeviceSignatures:
    """How a device's current records reached the store: counts by state, and the names of
    the trusted keys that signed the verified ones."""

    device: str
    states: Counter[str] = field(default_factory=Counter)
    signers: set[str] = field(default_factory=set)

    def text(self) -> str:
        parts = []
        for state, n in sorted(self.states.items(), key=lambda item: -item[1]):
            by = f" (signed by {', '.join(sorted(self.signers))})" if state == "verified" else ""
            parts.append(f"{n} {state}{by}")
        return f"{self.device}: " + ", ".join(parts)


def _state(origin_verified: bool | None, signer_key: str | None, known: bool) -> str:
    if not known:
        return LOCAL
    if origin_verified:
        return "verified"
    return UNVERIFIED if signer_key else UNSIGNED


def signatures_by_device(engine: Engine) -> list[DeviceSignatures]:
    """For each device with records, its current cells' and measurements' origins."""
    found: dict[str, DeviceSignatures] = defaultdict(lambda: DeviceSignatures(""))
    with Session(engine) as session:
        for table in (CellRecord, MeasurementRecord):
            query = (select(table.device, RecordOrigin.record_hash, RecordOrigin.verified,
                            RecordOrigin.signer_key, RecordOrigin.signer)
                     .outerjoin(RecordOrigin, RecordOrigin.record_hash == table.record_hash))
            for device, known, verified, key, signer in session.execute(query):
                entry = found[device]
                entry.device = device
                entry.states[_state(verified, key, known is not None)] += 1
                if verified and signer:
                    entry.signers.add(signer)
    return [found[d] for d in sorted(found)]


def replacement_count(engine: Engine) -> int:
    """How many times a stored record was replaced (rows of the audit table)."""
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(RecordReplacement)) or 0
