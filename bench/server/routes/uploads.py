"""POST /api/v1/uploads: JSON records or a bundle, written for the token's device."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from bench.exchange.signing import SIGNATURE_HEADER
from bench.server import db, ingest
from bench.server.auth import Writer

router = APIRouter(prefix="/api/v1", tags=["uploads"])

BODY = {"requestBody": {"required": True, "content": {
    ingest.JSON_TYPE: {"schema": {"$ref": "#/components/schemas/RecordBatch"}},
    "application/gzip": {"schema": {"type": "string", "format": "binary"}}}}}
ERRORS = {401: {"description": "Missing, wrong or revoked token"},
          403: {"description": "Records of another device, or a missing or wrong signature "
                               "(a device with a registered public key signs its uploads)"},
          413: {"description": "Body over the server's limit"},
          415: {"description": "Neither JSON nor a gzip bundle"},
          422: {"description": "Invalid records or bundle"},
          503: {"description": "The database stayed busy, or other uploads hold the staging "
                               "space; retry"}}


class UploadResult(BaseModel):
    upload_id: str
    added: int
    replaced: int
    unchanged: int
    stale: int


@router.post("/uploads", openapi_extra=BODY, responses=ERRORS)
async def upload(request: Request, device: Writer) -> UploadResult:
    """Store records (application/json RecordBatch) or a bundle (application/gzip); every
    record must be the token's device's. Signed with the `X-Medq-Signature` header (`ed25519
    <public key> <signature of the body's SHA-256>`); required once the device has a
    registered key. Idempotent: the same records again change nothing."""
    body = await request.body()
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    state = request.app.state
    try:
        upload_id, result = await run_in_threadpool(
            ingest.receive, state.store, device, content_type, body,
            state.settings.max_body_bytes, request.headers.get(SIGNATURE_HEADER),
            state.staging)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]
                                     ) from err
    except ingest.UploadRefused as err:
        retry = {"Retry-After": "1"} if err.status == status.HTTP_503_SERVICE_UNAVAILABLE \
            else None
        raise HTTPException(err.status, err.detail, headers=retry) from err
    except (DBAPIError, StaleDataError) as err:
        if db.transient(err):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                "the database is busy; retry",
                                headers={"Retry-After": "1"}) from err
        if isinstance(err, IntegrityError | DataError):
            reason = (str(err.orig).strip().splitlines() or ["a constraint is violated"])[0]
            raise HTTPException(422, f"the database refused the records: {reason}") from err
        raise
    return UploadResult(upload_id=upload_id, **result.as_counts())
