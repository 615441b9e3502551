"""`bench upload` against the real server app: sends only what the server lacks, resumes an
interrupted upload with nothing lost or doubled, retries what is transient and refuses the rest
with exit 2; plus one run against `bench serve` on loopback."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.exchange.client import RequestRefused, RetryPolicy, ServerClient, ServerError
from bench.exchange.upload import local_records, upload_store
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.records import RecordBatch
from tests.exchange_records import cell, measurement, synthetic_device
from tests.server_helpers import LiveServer

DEVICE = "pi"
FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, sleep=lambda _s: None)


def local_store(root: Path, n_cells: int = 30) -> ResultsStore:
    """``n_cells`` cells of the pi with 2 measurements each, plus records of another device
    (a cell trained on the GPU server and measured on the pi: only the measurement is the
    pi's)."""
    store = ResultsStore(root)
    cells, measurements = synthetic_device(DEVICE, n_cells, per_cell=2)
    gpu = cell("gpucell", device="gpu-server")
    store.ingest(RecordBatch(cells=[*cells, gpu], measurements=[
        *measurements, measurement("gpucell", DEVICE, 3.0, 4.0, 10.0, samples=3),
        measurement("gpucell", "gpu-server", 1.0, 2.0, 10.0)]))
    return store


class Server:
    """The app over a fresh store on ``db_url``, with a token for the pi."""

    def __init__(self, root: Path, db_url: str | None, **settings: object) -> None:
        self.app = create_app(ServerSettings(db_url=db_url, data_dir=root, **settings))
        self.token = create_token(self.app.state.store.engine, DEVICE)[1]
        self.http = TestClient(self.app)

    def client(self, http: httpx.Client | None = None, retry: RetryPolicy = FAST
               ) -> ServerClient:
        return ServerClient(http or self.http, self.token, retry)

    def counts(self) -> dict[str, tuple[int, int]]:
        items = self.http.get("/api/v1/devices").json()["items"]
        return {d["name"]: (d["cells"], d["measurements"]) for d in items}

    def hashes(self, kind: str) -> list[str]:
        reader = ServerClient(self.http)
        return [r["record_hash"] for r in reader.records(kind, {"device": DEVICE})]


@pytest.fixture
def server(tmp_path: Path, db_url: str | None) -> Server:
    return Server(tmp_path / "server", db_url)


def local_hashes(store: ResultsStore) -> tuple[set[str], set[str]]:
    cells, measurements = local_records(store, DEVICE)
    return {c.content_hash() for c in cells}, {m.content_hash() for m in measurements}


def test_full_upload_then_reupload_sends_nothing(tmp_path, server):
    store = local_store(tmp_path / "local")
    first = upload_store(store, server.client(), batch_size=16, quiet=True)
    assert (first.device, first.local, first.already, first.sent) == (DEVICE, 91, 0, 91)
    assert first.batches == 6 and first.counts == {"added": 91, "replaced": 0, "unchanged": 0,
                                                   "stale": 0}
    assert server.counts()[DEVICE] == (30, 61) and "gpu-server" not in server.counts()
    cells, measurements = local_hashes(store)
    assert sorted(server.hashes("cell")) == sorted(cells)
    assert sorted(server.hashes("measurement")) == sorted(measurements)
    again = upload_store(store, server.client(), batch_size=16, quiet=True)
    assert (again.already, again.sent, again.batches) == (91, 0, 0)
    assert "91 already on the server, 0 sent" in again.text()


class Interrupted(httpx.BaseTransport):
    """Passes requests to the app until ``uploads`` uploads went through; the next upload
    reaches the server but its answer is lost, and from then on nothing connects."""

    def __init__(self, app: httpx.Client, uploads: int) -> None:
        self.app, self.left, self.broken = app, uploads, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.broken:
            raise httpx.ConnectError("connection refused", request=request)
        response = self.app.send(request)
        if request.url.path.endswith("/uploads"):
            self.left -= 1
            if self.left < 0:
                self.broken = True
                raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(response.status_code, headers=response.headers,
                              content=response.content, request=request)


def test_interrupted_upload_then_rerun_completes_with_nothing_lost_or_doubled(tmp_path, server):
    store = local_store(tmp_path / "local")
    flaky = httpx.Client(transport=Interrupted(server.http, uploads=2),
                         base_url=str(server.http.base_url))
    with pytest.raises(ServerError, match="gave up after 3 tries"):
        upload_store(store, server.client(flaky), batch_size=10, quiet=True)
    stored = server.counts()[DEVICE]
    assert sum(stored) == 30 and stored == (30, 0)
    rerun = upload_store(store, server.client(), batch_size=10, quiet=True)
    assert (rerun.already, rerun.sent, rerun.counts["added"]) == (30, 61, 61)
    assert server.counts()[DEVICE] == (30, 61)
    cells, measurements = local_hashes(store)
    assert sorted(server.hashes("cell")) == sorted(cells)
    assert sorted(server.hashes("measurement")) == sorted(measurements)


def mock_server(script: dict[str, list[int]], calls: list[str]) -> httpx.Client:
    """A server answering each path with the next status in ``script`` (200 once empty)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        calls.append(path)
        status = script.get(path, []).pop(0) if script.get(path) else 200
        if status != 200:
            return httpx.Response(status, json={"detail": f"status {status}"},
                                  headers={"Retry-After": "0.25"} if status == 429 else {})
        if path == "/whoami":
            return httpx.Response(200, json={"device": DEVICE})
        if path == "/records/known":
            return httpx.Response(200, json={"known": []})
        body = RecordBatch.model_validate_json(request.content)
        return httpx.Response(200, json={"upload_id": "u", "added": len(body), "replaced": 0,
                                         "unchanged": 0, "stale": 0})

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://mock")


def test_retries_503_429_and_connection_errors_then_succeeds(tmp_path):
    store = local_store(tmp_path / "local", n_cells=3)
    calls: list[str] = []
    slept: list[float] = []
    retry = RetryPolicy(attempts=4, base_delay=0.01, max_delay=1.0, sleep=slept.append)
    http = mock_server({"/records/known": [503, 502], "/uploads": [429, 504]}, calls)
    summary = upload_store(store, ServerClient(http, "t", retry), batch_size=100, quiet=True)
    assert summary.sent == 10 and summary.counts["added"] == 10
    assert calls == ["/whoami", "/records/known", "/records/known", "/records/known",
                     "/uploads", "/uploads", "/uploads"]
    assert len(slept) == 4 and slept[2] == 0.25 and all(0 <= s <= 0.04 for s in slept[:2])
    calls.clear()
    http = mock_server({"/uploads": [503] * 4}, calls)
    with pytest.raises(ServerError, match="HTTP 503 status 503 .gave up after 4 tries"):
        upload_store(store, ServerClient(http, "t", retry), quiet=True)
    assert calls.count("/uploads") == 4
    calls.clear()
    http = mock_server({"/uploads": [500]}, calls)
    with pytest.raises(ServerError, match="HTTP 500"):
        upload_store(store, ServerClient(http, "t", retry), quiet=True)
    assert calls.count("/uploads") == 1


def test_backoff_grows_exponentially_with_full_jitter():
    retry = RetryPolicy(base_delay=1.0, max_delay=5.0, rng=random.Random(8))
    for attempt, ceiling in enumerate((1.0, 2.0, 4.0, 5.0, 5.0)):
        delays = [retry.delay(attempt) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling and max(delays) > ceiling / 2
    assert retry.delay(0, retry_after=3.0) == 3.0


def test_too_large_batches_are_split_and_an_oversized_record_is_refused(tmp_path, db_url):
    server = Server(tmp_path / "server", db_url, max_body_mb=0.005)
    store = local_store(tmp_path / "local", n_cells=10)
    summary = upload_store(store, server.client(), batch_size=100, quiet=True)
    assert summary.sent == 31 and summary.batches >= 6 and server.counts()[DEVICE] == (10, 21)
    store.ingest(RecordBatch(measurements=[measurement("big", DEVICE, 1.0, samples=5000)]))
    from bench.exchange.client import RequestRefused

    with pytest.raises(RequestRefused, match="HTTP 413: the request is larger"):
        upload_store(store, server.client(), quiet=True)


def test_deploy_artifacts_travel_in_bundles(tmp_path, server):
    store = local_store(tmp_path / "local", n_cells=3)
    record = cell("withfiles", device=DEVICE).to_row()
    with store.staging(record.cell_id) as staged:
        (staged / "model.onnx").write_bytes(b"onnx bytes")
        (staged / "checkpoint.pt").write_bytes(b"weights")
        store.commit(record, staged)
    summary = upload_store(store, server.client(), batch_size=4, artifacts="deploy",
                           bundle_cells=2, quiet=True)
    assert summary.sent == 11 and server.counts()[DEVICE] == (4, 7)
    model = server.http.get("/api/v1/cells/withfiles/artifacts/model.onnx")
    assert model.status_code == 200 and model.content == b"onnx bytes"
    assert server.http.get("/api/v1/cells/withfiles/artifacts/checkpoint.pt").status_code == 404


def with_files(store: ResultsStore, cell_id: str, files: dict[str, bytes]) -> None:
    """Commit a cell of the pi with ``files`` as its artifacts."""
    with store.staging(cell_id) as staged:
        for name, data in files.items():
            (staged / name).write_bytes(data)
        store.commit(cell(cell_id, device=DEVICE).to_row(), staged)


def test_files_of_a_cell_first_sent_without_them_follow_later(tmp_path, server):
    store = local_store(tmp_path / "local", n_cells=2)
    with_files(store, "late", {"model.onnx": b"late onnx", "checkpoint.pt": b"weights"})
    upload_store(store, server.client(), artifacts="none", quiet=True)
    url = "/api/v1/cells/late/artifacts/model.onnx"
    assert server.http.get(url).status_code == 404
    assert server.client().missing_artifacts(["late"]) == {
        "late": ["checkpoint.pt", "model.onnx"]}
    second = upload_store(store, server.client(), artifacts="deploy", quiet=True)
    assert (second.resent, second.counts["added"], second.counts["unchanged"]) == (1, 0, 1)
    assert "1 cells' files resent" in second.text()
    model = server.http.get(url)
    assert model.status_code == 200 and model.content == b"late onnx"
    assert model.headers["X-Content-SHA256"] == hashlib.sha256(b"late onnx").hexdigest()
    assert server.client().missing_artifacts(["late"]) == {"late": ["checkpoint.pt"]}
    third = upload_store(store, server.client(), artifacts="deploy", quiet=True)
    assert (third.sent, third.batches, third.resent) == (0, 0, 0)


def test_missing_artifacts_omits_unknown_cells_and_refuses_bad_bodies(tmp_path, server):
    store = local_store(tmp_path / "local", n_cells=1)
    upload_store(store, server.client(), quiet=True)
    held = local_records(store, DEVICE)[0][0].cell_id
    answer = server.http.post("/api/v1/artifacts/missing", json={"cell_ids": [held, "nope"]})
    assert answer.status_code == 200 and answer.json() == {"missing": {held: []}}
    for body in ({}, {"cell_ids": "x"}, {"cell_ids": ["../etc"]}, {"cell_ids": [], "x": 1},
                 {"cell_ids": ["c"] * 10_001}):
        assert server.http.post("/api/v1/artifacts/missing", json=body).status_code == 422


def test_too_large_bundles_are_split_down_to_one_cell(tmp_path, db_url):
    server = Server(tmp_path / "server", db_url, max_body_mb=0.05)
    store = ResultsStore(tmp_path / "local")
    rng = random.Random(8)
    files = {f"c{n}": rng.randbytes(15_000) for n in range(4)}
    for cell_id, data in files.items():
        with_files(store, cell_id, {"model.onnx": data})
    summary = upload_store(store, server.client(), artifacts="all", bundle_cells=4, quiet=True)
    assert (summary.sent, summary.batches) == (4, 2), "4 cells (4 x 15 kB) sent as 2 + 2"
    for cell_id, data in files.items():
        assert server.http.get(f"/api/v1/cells/{cell_id}/artifacts/model.onnx").content == data
    with_files(store, "huge", {"model.onnx": rng.randbytes(60_000)})
    with pytest.raises(RequestRefused, match="cell huge: its bundle .* larger than the server"):
        upload_store(store, server.client(), artifacts="all", quiet=True)
    assert server.counts()[DEVICE] == (4, 0)

def test_refusals_fail_at_once_with_the_servers_reason(tmp_path, server, cli):
    store = local_store(tmp_path / "local", n_cells=2)
    calls: list[str] = []
    http = mock_server({"/uploads": [403]}, calls)
    from bench.exchange.client import RequestRefused

    with pytest.raises(RequestRefused, match="HTTP 403: the token may not do this: status 403"):
        upload_store(store, ServerClient(http, "t", FAST), quiet=True)
    assert calls.count("/uploads") == 1
    wrong = ServerClient(server.http, "medq_wrong", FAST)
    with pytest.raises(RequestRefused, match="HTTP 401.*wrong or revoked") as refused:
        upload_store(store, wrong, quiet=True)
    assert refused.value.status == 401


def test_cli_against_bench_serve_on_loopback(tmp_path, cli, monkeypatch, db_url):
    store = local_store(tmp_path / "local", n_cells=5)
    data = tmp_path / "served"
    created = cli("serve", "token", "create", "--device", DEVICE, "--data", data,
                  *(("--db", db_url) if db_url else ()))
    token = created.stdout.strip()
    live = LiveServer(data, db_url).start()
    try:
        denied = cli("upload", "--to", live.url, "--token", "medq_nope", "--store", store.root)
        assert denied.exit_code == 2
        assert "HTTP 401: the token is missing, wrong or revoked" in denied.output
        done = cli("upload", "--to", live.url, "--token", token, "--store", store.root,
                   "--batch-size", "7")
        assert done.exit_code == 0, done.output
        assert "16 local records, 0 already on the server, 16 sent in 3 batches" in done.stdout
        monkeypatch.setenv("MEDQ_TOKEN", token)
        again = cli("upload", "--to", live.url, "--store", store.root)
        assert again.exit_code == 0 and "16 already on the server, 0 sent" in again.stdout
        devices = httpx.get(f"{live.url}/api/v1/devices").json()["items"]
        assert {d["name"]: (d["cells"], d["measurements"]) for d in devices}[DEVICE] == (5, 11)
    finally:
        live.kill()
    gone = cli("upload", "--to", live.url, "--store", store.root, "--attempts", "2")
    assert gone.exit_code == 1 and "ConnectError" in gone.output and "again" in gone.output
