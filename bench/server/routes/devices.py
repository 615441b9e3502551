"""Devices: who the token is (GET /api/v1/whoami) and every device's record counts."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.server.auth import Reader, Writer
from bench.server.tables import DeviceRecord
from bench.server.tokens import device_keys
from bench.store.schema import CellRecord, MeasurementRecord

router = APIRouter(prefix="/api/v1", tags=["devices"])


class Whoami(BaseModel):
    device: str


class DeviceInfo(BaseModel):
    name: str
    cells: int
    measurements: int
    last_upload_at: datetime | None
    keys: list[str] = []
    """Fingerprints of the device's registered public keys: its uploads are signed by one."""


class DeviceList(BaseModel):
    items: list[DeviceInfo]


@router.get("/whoami", responses={401: {"description": "Missing, wrong or revoked token"}})
def whoami(device: Writer) -> Whoami:
    """The device this token writes for."""
    return Whoami(device=device)


@router.get("/devices", dependencies=[Reader])
def devices(request: Request) -> DeviceList:
    """Every device with a token or with records, how many records it has, and its registered
    public keys (fingerprints)."""
    with Session(request.app.state.store.engine) as session:
        uploads = dict(session.execute(select(DeviceRecord.name, DeviceRecord.last_upload_at))
                       .all())
        cells = _counts(session, CellRecord.device)
        measurements = _counts(session, MeasurementRecord.device)
        keys = {name: [k.fingerprint for k in device_keys(session, name)] for name in uploads}
    names = sorted(uploads.keys() | cells.keys() | measurements.keys())
    return DeviceList(items=[DeviceInfo(name=name, cells=cells.get(name, 0),
                                        measurements=measurements.get(name, 0),
                                        last_upload_at=uploads.get(name),
                                        keys=keys.get(name, [])) for name in names])


def _counts(session: Session, column: object) -> dict[str, int]:
    return dict(session.execute(select(column, func.count()).group_by(column)).all())
