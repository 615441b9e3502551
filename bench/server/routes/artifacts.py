"""GET /api/v1/cells/{cell_id}/artifacts/{path}: a stored artifact file, checked first."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from bench.server.auth import Reader
from bench.store.artifacts import file_sha256
from bench.store.schema import CellRecord

router = APIRouter(prefix="/api/v1", tags=["artifacts"], dependencies=[Reader])

CellId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,32}$")]


@router.get("/cells/{cell_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The file; header X-Content-SHA256"},
                       404: {"description": "No such cell or file on this server"}})
def artifact(cell_id: CellId, path: str, request: Request) -> FileResponse:
    """A file of the cell's artifacts, if the server holds it and it matches its recorded
    SHA-256 (sent as X-Content-SHA256)."""
    store = request.app.state.store
    with Session(store.engine) as session:
        row = session.get(CellRecord, cell_id)
        folder = row.artifacts if row else None
        expected = (row.artifact_hashes or {}).get(path) if row else None
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
