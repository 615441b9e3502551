"""Reading records: GET /api/v1/records (filtered, paginated) and which hashes are known."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from bench.errors import UsageError
from bench.server.auth import Reader
from bench.server.record_json import items_json, page_json, total
from bench.store.query import RecordFilter
from bench.store.records import INT32, CellData, MeasurementData, Sha256, known_hashes

router = APIRouter(prefix="/api/v1", tags=["records"], dependencies=[Reader])

MAX_KNOWN = 10_000
MAX_VALUES = 100
"""The most values one filter of GET /records may repeat (422 beyond)."""
Word = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]
Bits = Annotated[int, Field(ge=1, le=32)]
Words = Annotated[list[Word] | None, Query()]


class KnownRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hashes: list[Sha256] = Field(max_length=MAX_KNOWN)


class KnownResponse(BaseModel):
    known: list[str]


class RecordPage(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    next_offset: int | None


@router.post("/records/known")
def known(body: KnownRequest, request: Request) -> KnownResponse:
    """Which of these record hashes (cells or measurements) the server holds."""
    with Session(request.app.state.store.engine) as session:
        return KnownResponse(known=sorted(known_hashes(session, body.hashes)))


@router.get("/records", response_model=RecordPage)
def records(
    request: Request,
    kind: Literal["cell", "measurement"] = "cell",
    dataset: Words = None,
    backbone: Words = None,
    method: Words = None,
    w_bits: Annotated[list[Bits] | None, Query()] = None,
    a_bits: Annotated[list[Bits] | None, Query()] = None,
    device: Words = None,
    profile: Words = None,
    status: Annotated[list[Literal["ok", "failed"]] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT32)] = 0,
    samples: Annotated[bool, Query(
        description="Measurements: include the latency samples (`samples_s`); false leaves "
                    "them out, the summaries stay.")] = True,
) -> Response:
    """Records of one kind matching every given filter (repeat a filter for any of several
    values), in a stable order; `next_offset` is null on the last page."""
    filters = {"dataset": dataset, "backbone": backbone, "method": method, "w_bits": w_bits,
               "a_bits": a_bits, "device": device, "profile": profile, "status": status}
    crowded = [name for name, values in filters.items() if len(values or ()) > MAX_VALUES]
    if crowded:
        raise HTTPException(422, f"{crowded[0]}: at most {MAX_VALUES} values per filter")
    try:
        chosen = RecordFilter(datasets=dataset or [], backbones=backbone or [],
                              methods=method or [], w_bits=w_bits or [], a_bits=a_bits or [],
                              devices=device or [], profiles=profile or [],
                              status=status or [], cells_by_device=True)
    except UsageError as err:
        raise HTTPException(422, str(err)) from err
    query = chosen.cells() if kind == "cell" else chosen.measurements()
    model = CellData if kind == "cell" else MeasurementData
    with Session(request.app.state.store.engine) as session:
        count = total(session, query, model)
        items, n = items_json(session, query, model, limit, offset, samples)
    return Response(page_json(items, n, count, limit, offset), media_type="application/json")
