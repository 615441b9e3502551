"""The results server's FastAPI app over one results store, and `serve` to run it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bench.server.db import open_store
from bench.server.ingest import StagingBudget
from bench.server.routes import artifacts, devices, pages, records, uploads
from bench.server.settings import ServerSettings
from bench.store import ResultsStore
from bench.store.records import RecordBatch

TITLE = "medq-bench results server"
VERSION = "1"
DESCRIPTION = ("Results of medq-bench from many devices. Each device uploads its own records "
               "with its token (`Authorization: Bearer <token>`); records, devices, artifacts "
               "and the HTML report are public to read unless the server runs with "
               "`--private-reads`.")


def create_app(settings: ServerSettings, store: ResultsStore | None = None) -> FastAPI:
    """The app serving ``store`` (default: the one ``settings`` names, opened and migrated)."""
    app = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION,
                  max_body_size=settings.max_body_bytes)
    app.state.settings = settings
    app.state.store = store or open_store(settings)
    app.state.staging = StagingBudget(settings.max_staging_bytes)
    for module in (uploads, records, devices, artifacts, pages):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_record_batch(get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _with_record_batch(schema: dict[str, Any]) -> dict[str, Any]:
    """Add RecordBatch (the JSON upload body, read by hand) to the schema's components."""
    batch = RecordBatch.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(batch.pop("$defs", {}))
    components["RecordBatch"] = batch
    return schema


def serve(settings: ServerSettings) -> None:
    """Run the server with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="info", proxy_headers=False)
