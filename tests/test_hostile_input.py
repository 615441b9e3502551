"""Hostile input to the results server, uploads, bundle import, `bench device pull` and
`bench measure` (issue 31): a clear refusal (422 / exit 2) instead of a 5xx or a traceback, and
memory and disk bounded by what the input is allowed to be."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.exchange.bundle import BundleError
from bench.exchange.manifest import parse_manifest
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from tests.server_helpers import bearer


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A server on SQLite in process, and a token of device dev-a."""
    app = create_app(ServerSettings.of(None, tmp_path / "server"))
    _, token = create_token(app.state.store.engine, "dev-a")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, token


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# ---------------------------------------------------------------- 2: no 5xx, no traceback


def test_a_deeply_nested_manifest_is_refused():
    with pytest.raises(BundleError, match="nested too deeply"):
        parse_manifest(deep(100_000))


def tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def test_a_deeply_nested_manifest_upload_is_422(api):
    client, token = api
    bundle = tar_gz({"medq-bundle/manifest.json": deep(100_000)})
    response = client.post("/api/v1/uploads", content=bundle,
                           headers={**bearer(token), "Content-Type": "application/gzip"})
    assert response.status_code == 422 and "nested too deeply" in response.text


def test_cli_import_of_a_deeply_nested_manifest_exits_2(cli, tmp_path):
    path = tmp_path / "deep.tar.gz"
    path.write_bytes(tar_gz({"medq-bundle/manifest.json": deep(100_000)}))
    result = cli("import", path, "--store", tmp_path / "store")
    assert result.exit_code == 2 and "nested too deeply" in result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("params, match", [
    ({"dataset": "[z-a]"}, "invalid pattern '[z-a]'"),
    ({"backbone": [f"b{i}*" for i in range(999)]}, "at most 100 values"),
    ({"device": [f"d{i}" for i in range(101)]}, "at most 100 values"),
])
def test_public_record_filters_are_422_not_500(api, params, match):
    client, _ = api
    response = client.get("/api/v1/records", params=params)
    assert response.status_code == 422 and match in response.text


def test_many_wildcard_patterns_are_refused_in_the_filter():
    from bench.errors import UsageError
    from bench.store.query import RecordFilter

    RecordFilter(methods=[f"m{i}*" for i in range(100)])
    with pytest.raises(UsageError, match="at most 100"):
        RecordFilter(methods=[f"m{i}*" for i in range(101)])


def test_cli_export_with_an_invalid_pattern_exits_2(cli, tmp_path):
    ResultsStore(tmp_path / "store")
    result = cli("export", "--store", tmp_path / "store", "--out", tmp_path / "b.tar.gz",
                 "--dataset", "[z-a]")
    assert result.exit_code == 2 and "invalid pattern '[z-a]'" in result.output
