"""Where `bench compare` reads records: a local store (SQLAlchemy) or a results server (its
`GET /api/v1/records`, page by page), both into the same CellData and MeasurementData models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.compare import Comparison, check_devices, compare
from bench.exchange.client import ServerClient
from bench.store.database import ResultsStore
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData
from bench.store.schema import CellRecord, MeasurementRecord


@dataclass(frozen=True)
class Records:
    """Successful cells and measurements to compare, and every device the source knows."""

    cells: list[CellData]
    measurements: list[MeasurementData]
    present: list[str]


def _fetched(selection: RecordFilter, devices: Sequence[str]) -> tuple[RecordFilter,
                                                                       RecordFilter]:
    """What to read: cells of the selection's data sets and backbones (all methods and bits,
    so FP32 references come along) and their measurements on ``devices``."""
    cells = RecordFilter(datasets=selection.datasets, backbones=selection.backbones,
                         status=["ok"])
    return cells, cells.model_copy(update={"devices": list(devices)})


def from_store(store: ResultsStore, selection: RecordFilter, devices: Sequence[str]
               ) -> Records:
    cells, measurements = _fetched(selection, devices)
    with Session(store.engine) as session:
        present = {*session.scalars(select(CellRecord.device).distinct()),
                   *session.scalars(select(MeasurementRecord.device).distinct())}
        check_devices(devices, present)
        return Records([CellData.of(r) for r in session.scalars(cells.cells())],
                       [MeasurementData.of(r) for r in session.scalars(
                           measurements.measurements())], sorted(present))


def _params(selection: RecordFilter) -> dict[str, Any]:
    pairs = {"dataset": selection.datasets, "backbone": selection.backbones,
             "device": selection.devices, "status": selection.status}
    return {key: values for key, values in pairs.items() if values}


def from_server(server: ServerClient, selection: RecordFilter, devices: Sequence[str]
                ) -> Records:
    present = [d["name"] for d in server.devices()]
    check_devices(devices, present)
    cells, measurements = _fetched(selection, devices)
    lean = {**_params(measurements), "samples": "false"}   # compare reads only summaries
    return Records([CellData.from_api(i) for i in server.records("cell", _params(cells))],
                   [MeasurementData.from_api(i) for i in server.records("measurement", lean)],
                   sorted(present))


def compare_source(source: ResultsStore | ServerClient, devices: Sequence[str],
                   selection: RecordFilter, profile: str | None = None) -> Comparison:
    """Compare ``devices`` on the records of a store or a server (unknown devices: UsageError
    naming those present)."""
    records = (from_store(source, selection, devices) if isinstance(source, ResultsStore)
               else from_server(source, selection, devices))
    return compare(records.cells, records.measurements, devices, profile, selection)
