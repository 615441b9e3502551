"""Artifact files: GET /api/v1/cells/{cell_id}/artifacts/{path} (a stored file, checked first)
and POST /api/v1/artifacts/missing (which listed files of some cells the server lacks)."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.server.auth import Credentials, Reader, token_device
from bench.store.artifacts import file_sha256
from bench.store.deploy import DEPLOY_STAGE
from bench.store.schema import CellRecord

router = APIRouter(prefix="/api/v1", tags=["artifacts"], dependencies=[Reader])

TEST_IMAGES = "test_inputs_file"
"""The deploy stage's entry naming the cell's test images (bench.store.deploy.INPUT_KEYS)."""
CELL_ID_PATTERN = r"^[0-9A-Za-z_-]{1,32}$"
MAX_CELLS = 10_000
CellId = Annotated[str, Path(pattern=CELL_ID_PATTERN)]


class MissingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cell_ids: list[Annotated[str, StringConstraints(pattern=CELL_ID_PATTERN)]] = Field(
        max_length=MAX_CELLS)


class MissingResponse(BaseModel):
    missing: dict[str, list[str]]


@router.post("/artifacts/missing")
def missing(body: MissingRequest, request: Request) -> MissingResponse:
    """For each requested cell the server holds, the files its record lists that are not in
    the server's artifact folder (existence only; downloads check the hash). Unknown cells are
    left out."""
    store = request.app.state.store
    wanted = list(dict.fromkeys(body.cell_ids))
    with Session(store.engine) as session:
        rows = session.execute(select(CellRecord.cell_id, CellRecord.artifacts,
                                      CellRecord.artifact_hashes)
                               .where(CellRecord.cell_id.in_(wanted))).all()
    answer: dict[str, list[str]] = {}
    for cell_id, folder, hashes in rows:
        answer[cell_id] = sorted(path for path in hashes or {}
                                 if not _present(store.root, folder, path))
    return MissingResponse(missing=answer)


def _present(root: FilePath, folder: str | None, relative: str) -> bool:
    """Whether the cell's artifact ``folder`` (relative to ``root``) holds file ``relative``."""
    if folder is None:
        return False
    file = _inside(root / folder, relative)
    return file is not None and file.is_file()


@router.get("/cells/{cell_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The file; header X-Content-SHA256"},
                       404: {"description": "No such cell or file on this server"}})
def artifact(cell_id: CellId, path: str, request: Request,
             credentials: Credentials) -> FileResponse:
    """A file of the cell's artifacts, if the server holds it and it matches its recorded
    SHA-256 (sent as X-Content-SHA256). The cell's test images (accuracy mode's inputs, of
    patients on real data) need a device's token even where reads are public."""
    store = request.app.state.store
    with Session(store.engine) as session:
        row = session.get(CellRecord, cell_id)
        folder = row.artifacts if row else None
        expected = (row.artifact_hashes or {}).get(path) if row else None
        deploy = (row.metrics or {}).get(DEPLOY_STAGE) if row else None
    if isinstance(deploy, dict) and path == deploy.get(TEST_IMAGES):
        token_device(request, credentials)
    if folder is None or expected is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {path!r} of cell {cell_id}")
    file = _inside(store.root / folder, path)
    if file is None or not file.is_file() or file_sha256(file) != expected:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"artifact {path!r} of cell {cell_id} is not on this server")
    return FileResponse(file, media_type="application/octet-stream",
                        headers={"X-Content-SHA256": expected})


def _inside(folder: FilePath, relative: str) -> FilePath | None:
    """``folder / relative`` if it stays inside ``folder`` (no '..', no links out)."""
    if any(part in ("", ".", "..") for part in relative.split("/")):
        return None
    path = (folder / relative).resolve()
    return path if path.is_relative_to(folder.resolve()) else None
