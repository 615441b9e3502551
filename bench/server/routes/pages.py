"""GET /report (the HTML report of the server's store) and GET /healthz."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from bench.extras import DISTRIBUTION
from bench.server.auth import Reader
from bench.store import migrate

router = APIRouter()
_report_lock = threading.Lock()
"""One report at a time: rendering is CPU-bound and its plotting is not thread-safe. Requests
that find it taken are answered 503 at once rather than wait in a worker thread, since the
threads they would hold are the ones uploads run in."""
RETRY_AFTER_S = 5


class Health(BaseModel):
    status: str
    revision: str | None = Field(alias="schema", description="The Alembic revision")


@router.get("/report", response_class=HTMLResponse, dependencies=[Reader], tags=["report"],
            responses={503: {"description": "This install cannot render reports, or "
                                            "another report is being built (see Retry-After)"}})
def report(request: Request) -> HTMLResponse:
    """The self-contained HTML report of the server's records (the `bench report` code), with
    the report's Content-Security-Policy also as a header."""
    try:
        from bench.report import build_report
        from bench.report.build import ReportOptions
        from bench.report.render import content_security_policy
    except ModuleNotFoundError as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"the report needs pip install '{DISTRIBUTION}[full]' "
                            f"(missing: {err.name})") from err
    if not _report_lock.acquire(blocking=False):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "another report is being built; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        with tempfile.TemporaryDirectory(prefix="medq-report-") as folder:
            # Thumbnails of test images (patients') only where reads need a token.
            options = ReportOptions(test_images=request.app.state.settings.private_reads)
            path = build_report(request.app.state.store, Path(folder) / "index.html", "html",
                                options)
            return HTMLResponse(path.read_text(encoding="utf-8"), headers={
                "Content-Security-Policy": content_security_policy()})
    finally:
        _report_lock.release()


@router.get("/healthz", tags=["health"],
            responses={503: {"description": "The database cannot be reached"}})
def healthz(request: Request) -> Health:
    """`ok` and the database's schema revision."""
    try:
        revision = migrate.current(request.app.state.store.engine)
    except SQLAlchemyError as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the database cannot be reached") from err
    return Health(status="ok", schema=revision)
