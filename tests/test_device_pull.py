"""The device side: pull deployable cells, measure them, upload the measurements.

A workstation store is made by the full install (a tiny grid with the deploy stage). The fast
tests pull from a bundle in this process; the round trip runs the light install (`medq-bench
[device]`, no torch, in a fresh venv) against a real `bench serve` on 127.0.0.1.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.errors import UsageError
from bench.exchange.bundle import BUNDLE_CONTENT_TYPE, JSON_CONTENT_TYPE, export_bundle
from bench.exchange.client import RequestRefused, RetryPolicy, ServerClient
from bench.exchange.pull import pull
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.artifacts import file_sha256
from bench.store.deploy import deploy_files
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData, RecordBatch
from bench.store.schema import MeasurementRecord
from tests.device_venv import device_venv_fixture  # noqa: F401 (a fixture)
from tests.exchange_records import cell as hand_cell
from tests.server_helpers import LiveServer
from tests.workstation import bench, make_workstation, quick_profile

QUICK = quick_profile(5)


@pytest.fixture(scope="module")
def workstation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of two deployed cells (FP32 and PTQ W8A8) made on device "ws", measured there."""
    return make_workstation(tmp_path_factory.mktemp("ws"), QUICK)


def _cells(store: Path) -> list[CellData]:
    return [CellData.of(r) for r in ResultsStore(store).records()]


def _measurements(store: Path) -> list[MeasurementData]:
    with Session(ResultsStore(store).engine) as session:
        return [MeasurementData.of(r) for r in session.scalars(select(MeasurementRecord))]


def test_pull_from_a_bundle_brings_checked_deploy_files_only(workstation, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    assert bench("export", "--store", workstation / "s", "--out", bundle,
                 "--artifacts", "all").exit_code == 0
    result = bench("device", "pull", "--from", bundle, "--store", tmp_path / "pi")
    assert result.exit_code == 0, result.output
    assert "pulled 2 deployable cells" in result.output
    pulled = {c.cell_id: c for c in _cells(tmp_path / "pi")}
    source = {c.cell_id: c for c in _cells(workstation / "s")}
    assert pulled == source, "records arrive unchanged"
    store = ResultsStore(tmp_path / "pi")
    for cell in pulled.values():
        files = sorted(p.relative_to(store.artifact_dir(cell.cell_id)).as_posix()
                       for p in store.artifact_dir(cell.cell_id).rglob("*") if p.is_file())
        assert files == deploy_files(cell) and files, "only what measuring needs"
        for name in files:
            assert file_sha256(store.artifact_dir(cell.cell_id) / name) == \
                cell.artifact_hashes[name]
    assert not _measurements(tmp_path / "pi"), "measurements of other devices stay behind"
    measured = bench("measure", "--profile", workstation / "quick.toml", "--store",
                     tmp_path / "pi", "--device-name", "pi", "--quiet")
    assert measured.exit_code == 0 and "2 measured" in measured.output, measured.output


def test_pull_filters_and_refuses_bundles_without_files(workstation, tmp_path):
    bare = tmp_path / "bare.tar.gz"
    assert bench("export", "--store", workstation / "s", "--out", bare).exit_code == 0
    result = bench("device", "pull", "--from", bare, "--store", tmp_path / "pi")
    assert result.exit_code == 2 and "--artifacts deploy" in result.output
    assert not (tmp_path / "pi").exists() or not _cells(tmp_path / "pi")
    deploy = tmp_path / "deploy.tar.gz"
    assert bench("export", "--store", workstation / "s", "--out", deploy,
                 "--artifacts", "deploy").exit_code == 0
    result = bench("device", "pull", "--from", deploy, "--store", tmp_path / "pi",
                   "--method", "ptq")
    assert result.exit_code == 0, result.output
    assert [c.method for c in _cells(tmp_path / "pi")] == ["ptq"]
    missing = bench("device", "pull", "--from", tmp_path / "nope", "--store", tmp_path / "pi")
    assert missing.exit_code == 2 and "neither a server URL" in missing.output


@pytest.fixture
def server(tmp_path: Path) -> Any:
    settings = ServerSettings.of(None, tmp_path / "srv")
    engine = ResultsStore(settings.data_dir, settings.db_url).engine
    tokens = {device: create_token(engine, device)[1] for device in ("ws", "pi")}
    engine.dispose()
    live = LiveServer(tmp_path / "srv").start()
    yield live, tokens
    live.kill()


def test_light_install_pulls_measures_and_uploads(workstation, server, device_venv, tmp_path):
    """Workstation uploads cells with their deploy files; the torch-free device install pulls
    them from the server, measures, and uploads; the server then holds the device's records,
    identical in schema to the workstation's own measurements."""
    live, tokens = server
    sent = bench("upload", "--to", live.url, "--token", tokens["ws"], "--store",
                 workstation / "s", "--artifacts", "deploy", "--quiet")
    assert sent.exit_code == 0, sent.output
    pi = tmp_path / "pi"
    (tmp_path / "quick.toml").write_text(QUICK)
    steps = [
        ("python", "-c", "import importlib.util as u; assert u.find_spec('torch') is None"),
        ("bench", "device", "pull", "--from", live.url, "--token", tokens["pi"], "--store", pi),
        ("bench", "measure", "--profile", tmp_path / "quick.toml", "--store", pi,
         "--device-name", "pi", "--quiet"),
        ("bench", "upload", "--to", live.url, "--token", tokens["pi"], "--store", pi,
         "--quiet"),
    ]
    for step in steps:
        done = device_venv.run(*step)
        assert done.returncode == 0, f"{step}: {done.stdout}\n{done.stderr}"

    page = httpx.get(f"{live.url}/api/v1/records",
                     params={"kind": "measurement", "device": "pi"}).json()
    on_server = [MeasurementData.from_api(item) for item in page["items"]]
    local = _measurements(pi)
    assert {m.content_hash() for m in on_server} == {m.content_hash() for m in local}
    assert {m.cell_id for m in on_server} == {c.cell_id for c in _cells(workstation / "s")}
    reference = _measurements(workstation / "s")[0]
    for measured in on_server:
        assert measured.status == "ok" and measured.latency_ms_p50 > 0
        assert measured.fingerprint.keys() == reference.fingerprint.keys()
        assert measured.fingerprint["packages"]["torch"] is None
        assert measured.details.keys() == reference.details.keys()
        assert measured.profile_config == reference.profile_config
        assert measured.details["accuracy_mode"] == "on", "the light install ran accuracy mode"
        assert measured.details["device_agreement"] == 1.0


# ---------------------------------------------------------------- from a server, without training


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerClient]:
    """A server (in process) holding cells "a" (with its ONNX file) and "b" (its record only)
    of device "ws"."""
    app = create_app(ServerSettings.of(None, tmp_path / "srv"))
    token = create_token(app.state.store.engine, "ws")[1]
    ws = ResultsStore(tmp_path / "ws")
    for cell_id in ("a", "b"):
        with ws.staging(cell_id) as staged:
            (staged / "model.onnx").write_bytes(f"onnx of {cell_id}".encode())
            ws.commit(hand_cell(cell_id, device="ws").to_row(), staged)
    bundle = export_bundle(ws, tmp_path / "a.tar.gz", RecordFilter(cell_ids=["a"]), "deploy")
    with TestClient(app) as http:
        writer = ServerClient(http, token)
        writer.upload(bundle.path.read_bytes(), BUNDLE_CONTENT_TYPE)
        writer.upload(RecordBatch(cells=[CellData.of(ws.get("b"))]).model_dump_json().encode(),
                      JSON_CONTENT_TYPE)
        yield ServerClient(http)


def test_pull_skips_cells_whose_files_the_server_lacks(served, tmp_path):
    summary = pull(ResultsStore(tmp_path / "pi"), "http://testserver", RecordFilter(),
                   server=served)
    assert (summary.cells, summary.files) == (1, 1)
    assert len(summary.skipped) == 1 and summary.skipped[0].startswith(
        "b: the server lacks its files (GET /api/v1/cells/b/artifacts/model.onnx: HTTP 404")
    pi = ResultsStore(tmp_path / "pi")
    assert [c.cell_id for c in _cells(tmp_path / "pi")] == ["a"]
    assert (pi.artifact_dir("a") / "model.onnx").read_bytes() == b"onnx of a"
    with pytest.raises(UsageError, match="none of the deployable cells could be pulled.*b: "):
        pull(ResultsStore(tmp_path / "pi2"), "http://testserver", RecordFilter(cell_ids=["b"]),
             server=served)
    assert not _cells(tmp_path / "pi2")


def test_cli_pull_lists_skipped_cells_and_exits_2_when_none_is_pulled(served, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr(ServerClient, "connect", lambda *_a, **_k: served)
    result = bench("device", "pull", "--from", "http://testserver", "--store", tmp_path / "pi")
    assert result.exit_code == 0, result.output
    assert "cell skipped: b: the server lacks its files" in result.output
    assert "pulled 1 deployable cells" in result.output
    none = bench("device", "pull", "--from", "http://testserver", "--store", tmp_path / "pi",
                 "--cell", "b")
    assert none.exit_code == 2 and "none of the deployable cells" in none.output


def test_pull_holds_the_stores_run_lock(served, tmp_path, monkeypatch):
    monkeypatch.setattr(ServerClient, "connect", lambda *_a, **_k: served)
    store = ResultsStore(tmp_path / "pi")
    with store.exclusive("run"):
        result = bench("device", "pull", "--from", "http://testserver", "--store", store.root)
    assert result.exit_code == 2 and "another bench run is using the store" in result.output
    assert not _cells(store.root)


def test_download_streams_to_disk_with_retries(tmp_path):
    size, calls = 64 << 20, []

    def body() -> Iterator[bytes]:
        for _ in range(size >> 20):
            yield b"x" * (1 << 20)

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return httpx.Response(503)
        if request.url.path.endswith("missing"):
            return httpx.Response(404, json={"detail": "no such file"})
        return httpx.Response(200, stream=_Stream(body()))

    retry = RetryPolicy(attempts=3, base_delay=0.0, sleep=lambda _s: None)
    client = ServerClient(httpx.Client(transport=httpx.MockTransport(handle),
                                       base_url="http://mock"), retry=retry)
    tracemalloc.start()
    try:
        digest = client.download("/file", tmp_path / "file", size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert calls == ["/file", "/file"]
    assert (tmp_path / "file").stat().st_size == size
    assert digest == file_sha256(tmp_path / "file")
    assert peak < 16 << 20, f"the download held {peak >> 20} MiB in memory"
    with pytest.raises(RequestRefused, match="HTTP 404.*no such file") as refused:
        client.download("/missing", tmp_path / "missing", size)
    assert refused.value.status == 404


class _Stream(httpx.SyncByteStream):
    """A response body that arrives a chunk at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
