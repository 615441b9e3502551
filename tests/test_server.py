"""The results server's API in process (FastAPI's TestClient), on SQLite and on PostgreSQL:
tokens, device ownership, limits, validation, idempotent uploads, reads, artifacts, report."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.cli import exits_on_usage_error
from bench.errors import UsageError
from bench.extras import modules_by_extra
from bench.server.app import create_app
from bench.server.settings import ServerSettings, default_data_dir, normalize_url
from bench.server.tables import ApiToken, DeviceRecord, UploadRecord
from bench.server.tokens import create_token, revoke_token
from bench.store import CellRecord, ResultsStore, migrate
from bench.store.schema import MeasurementRecord
from tests.server_helpers import ROOT, batch, bearer, body, cell, measurement


@dataclass
class Server:
    client: TestClient
    store: ResultsStore
    token: str

    def upload(self, records: Any, token: str | None = None, **kwargs: Any) -> Any:
        return self.client.post("/api/v1/uploads", json=body(records),
                                headers=bearer(token or self.token), **kwargs)

    def count(self, table: Any = CellRecord) -> int:
        with Session(self.store.engine) as session:
            return session.scalar(select(func.count()).select_from(table)) or 0


@pytest.fixture
def make_server(tmp_path, db_url) -> Iterator[Callable[..., Server]]:
    """A server over one database (per test); options go to ServerSettings."""
    clients: list[TestClient] = []

    def make(**options: Any) -> Server:
        app = create_app(ServerSettings.of(db_url, tmp_path / "server", **options))
        client = TestClient(app)
        clients.append(client)
        _, token = create_token(app.state.store.engine, "dev-a")
        return Server(client, app.state.store, token)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


def test_upload_stores_records_and_reupload_changes_nothing(server):
    records = batch([cell("c1"), cell("c2", method="ptq", bits=8)],
                    [measurement("c1"), measurement("c2")])
    first = server.upload(records)
    assert first.status_code == 200, first.text
    assert {k: first.json()[k] for k in ("added", "replaced", "unchanged", "stale")} == \
        {"added": 4, "replaced": 0, "unchanged": 0, "stale": 0}
    again = server.upload(records)
    assert again.status_code == 200
    assert again.json()["unchanged"] == 4 and again.json()["added"] == 0
    assert again.json()["upload_id"] != first.json()["upload_id"]
    assert server.count(CellRecord) == 2 and server.count(MeasurementRecord) == 2
    with Session(server.store.engine) as session:
        uploads = session.scalars(select(UploadRecord).order_by(UploadRecord.received_at)).all()
        device = session.get(DeviceRecord, "dev-a")
    assert [u.counts["added"] for u in uploads] == [4, 0]
    assert {u.device for u in uploads} == {"dev-a"}
    assert device is not None and device.last_upload_at == uploads[-1].received_at


def test_better_record_replaces_and_older_one_is_stale(server):
    assert server.upload(batch([cell("c1", status="failed", error="boom")])).status_code == 200
    better = server.upload(batch([cell("c1", minutes=5)])).json()
    older = server.upload(batch([cell("c1", status="failed", error="x", minutes=9)])).json()
    assert better["replaced"] == 1 and older["stale"] == 1
    assert server.store.get("c1").status == "ok"


@pytest.mark.parametrize("headers", [{}, bearer("medq_wrong"), {"Authorization": "Basic eDp5"}],
                         ids=["none", "wrong", "not-bearer"])
def test_writes_need_a_valid_token(server, headers):
    response = server.client.post("/api/v1/uploads", json=body(batch([cell("c1")])),
                                  headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert server.client.get("/api/v1/whoami", headers=headers).status_code == 401
    assert server.count() == 0


def test_revoked_token_is_refused(server):
    token_id, token = create_token(server.store.engine, "dev-b")
    assert server.client.get("/api/v1/whoami", headers=bearer(token)).json() == \
        {"device": "dev-b"}
    revoke_token(server.store.engine, token_id)
    assert server.client.get("/api/v1/whoami", headers=bearer(token)).status_code == 401
    assert server.upload(batch([cell("c1", device="dev-b")]), token).status_code == 401
    assert server.count() == 0


def test_tokens_are_stored_only_as_hashes(server):
    with Session(server.store.engine) as session:
        hashes = set(session.scalars(select(ApiToken.token_hash)))
    assert hashlib.sha256(server.token.encode()).hexdigest() in hashes
    assert server.token.startswith("medq_") and server.token not in hashes


def test_records_of_another_device_are_refused_and_nothing_written(server):
    mixed = batch([cell("c1"), cell("c2", device="dev-b")], [measurement("c1")])
    response = server.upload(mixed)
    assert response.status_code == 403 and "dev-b" in response.json()["detail"]
    only_measurement = batch(measurements=[measurement("c1", device="dev-b")])
    assert server.upload(only_measurement).status_code == 403
    assert server.count(CellRecord) == 0 and server.count(MeasurementRecord) == 0
    assert server.count(UploadRecord) == 0


def test_a_device_cannot_replace_another_devices_cell(server):
    assert server.upload(batch([cell("c1", status="failed", error="x")])).status_code == 200
    _, token_b = create_token(server.store.engine, "dev-b")
    response = server.upload(batch([cell("c1", device="dev-b", minutes=5)]), token_b)
    assert response.status_code == 403 and "dev-a" in response.json()["detail"]
    assert server.store.get("c1").device == "dev-a"


def test_oversized_bodies_get_413_and_write_nothing(make_server):
    server = make_server(max_body_mb=0.01)
    big = batch([cell(f"c{i}") for i in range(40)])
    response = server.upload(big)
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1024

    streamed = server.client.post("/api/v1/uploads", content=chunks(),
                                  headers={**bearer(server.token),
                                           "Content-Type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert server.upload(batch([cell("c1")])).status_code == 200
    assert server.count() == 1


@pytest.mark.parametrize(("content", "content_type"), [
    (b"{not json", "application/json"),
    (b'{"cells": [{"cell_id": "c1"}]}', "application/json"),
    (b'{"cells": [], "extra": 1}', "application/json"),
    (b"[]", "application/json"),
    (b"not a gzip", "application/gzip"),
], ids=["bad-json", "missing-fields", "extra-field", "not-an-object", "bad-bundle"])
def test_malformed_uploads_get_422(server, content, content_type):
    response = server.client.post("/api/v1/uploads", content=content,
                                  headers={**bearer(server.token), "Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert server.count() == 0


def test_invalid_record_values_get_422_with_their_location(server):
    bad = body(batch([cell("c1")]))
    bad["cells"][0]["w_bits"] = 99
    response = server.client.post("/api/v1/uploads", json=bad, headers=bearer(server.token))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "cells", 0, "w_bits"]
    nul = body(batch([cell("c1")]))
    nul["cells"][0]["error"] = "a\x00b"
    assert server.client.post("/api/v1/uploads", json=nul,
                              headers=bearer(server.token)).status_code == 422
    assert server.count() == 0


def test_other_content_types_get_415(server):
    response = server.client.post("/api/v1/uploads", content=b"x",
                                  headers={**bearer(server.token), "Content-Type": "text/plain"})
    assert response.status_code == 415


@pytest.fixture
def filled(server) -> Server:
    cells = [cell("fp", method="fp32"), cell("q8", method="qat", bits=8),
             cell("q4", method="qat", bits=4), cell("p4", method="pact", bits=4),
             cell("x4", method="ptq", bits=4, dataset="kvasir"),
             cell("bad", method="pact", bits=4, status="failed", error="diverged")]
    measurements = [measurement(c.cell_id, profile=p) for c in cells[:3]
                    for p in ("host", "pi4")]
    assert server.upload(batch(cells, measurements)).status_code == 200
    _, token_b = create_token(server.store.engine, "dev-b")
    assert server.upload(batch(measurements=[measurement("fp", device="dev-b")]),
                         token_b).status_code == 200
    return server


def _ids(page: dict[str, Any]) -> list[str]:
    return [item["cell_id"] for item in page["items"]]


def test_records_filters(filled):
    get = filled.client.get
    assert sorted(_ids(get("/api/v1/records", params={"method": ["qat", "pact"]}).json())) == \
        ["bad", "p4", "q4", "q8"]
    assert sorted(_ids(get("/api/v1/records", params={"w_bits": 4, "status": "ok"}).json())) \
        == ["p4", "q4", "x4"]
    assert _ids(get("/api/v1/records", params={"dataset": "kvasir"}).json()) == ["x4"]
    assert get("/api/v1/records", params={"device": "dev-b"}).json()["total"] == 0
    pi = get("/api/v1/records", params={"kind": "measurement", "profile": "pi4"}).json()
    assert pi["total"] == 3 and {m["profile"] for m in pi["items"]} == {"pi4"}
    on_b = get("/api/v1/records", params={"kind": "measurement", "device": "dev-b"}).json()
    assert [(m["cell_id"], m["device"]) for m in on_b["items"]] == [("fp", "dev-b")]
    by_cell = get("/api/v1/records", params={"kind": "measurement", "method": "qat",
                                             "w_bits": 8}).json()
    assert {m["cell_id"] for m in by_cell["items"]} == {"q8"}


def test_records_carry_their_content_hash(filled):
    item = filled.client.get("/api/v1/records", params={"dataset": "kvasir"}).json()["items"][0]
    assert item["record_hash"] == cell("x4", method="ptq", bits=4, dataset="kvasir") \
        .content_hash()


def test_records_pagination_walks_every_record_once(filled):
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = filled.client.get("/api/v1/records",
                                 params={"limit": 4, "offset": offset}).json()
        assert page["total"] == 6 and page["limit"] == 4 and len(page["items"]) <= 4
        seen += _ids(page)
        offset = page["next_offset"]
    assert sorted(seen) == ["bad", "fp", "p4", "q4", "q8", "x4"] and len(seen) == 6
    past = filled.client.get("/api/v1/records", params={"offset": 100}).json()
    assert past["items"] == [] and past["next_offset"] is None


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1},
                                    {"kind": "cells"}, {"w_bits": 64}, {"w_bits": "x"},
                                    {"status": "done"}, {"method": "a\x00"}])
def test_bad_record_queries_get_422(server, params):
    assert server.client.get("/api/v1/records", params=params).status_code == 422


def test_known_hashes(filled):
    stored = cell("fp").content_hash()
    measured = measurement("q8", profile="pi4").content_hash()
    unknown = "0" * 64
    response = filled.client.post("/api/v1/records/known",
                                  json={"hashes": [stored, unknown, measured]})
    assert response.status_code == 200
    assert sorted(response.json()["known"]) == sorted([stored, measured])
    assert filled.client.post("/api/v1/records/known",
                              json={"hashes": ["nothex"]}).status_code == 422
    assert filled.client.post("/api/v1/records/known",
                              json={"hashes": [unknown] * 10_001}).status_code == 422


def test_whoami(server):
    response = server.client.get("/api/v1/whoami", headers=bearer(server.token))
    assert response.status_code == 200 and response.json() == {"device": "dev-a"}


def test_devices_list_tokens_and_counts(filled):
    create_token(filled.store.engine, "dev-idle")
    items = {d["name"]: d for d in filled.client.get("/api/v1/devices").json()["items"]}
    assert sorted(items) == ["dev-a", "dev-b", "dev-idle"]
    assert (items["dev-a"]["cells"], items["dev-a"]["measurements"]) == (6, 6)
    assert (items["dev-b"]["cells"], items["dev-b"]["measurements"]) == (0, 1)
    assert items["dev-a"]["last_upload_at"] is not None
    assert items["dev-idle"] == {"name": "dev-idle", "cells": 0, "measurements": 0,
                                 "last_upload_at": None, "keys": []}


def test_private_reads_need_a_token(make_server):
    server = make_server(private_reads=True)
    for path in ("/api/v1/records", "/api/v1/devices", "/report"):
        assert server.client.get(path).status_code == 401, path
    assert server.client.post("/api/v1/records/known", json={"hashes": []}).status_code == 401
    assert server.client.get("/api/v1/records", headers=bearer(server.token)).status_code == 200
    assert server.client.get("/healthz").status_code == 200


def _cell_with_files(store: ResultsStore, cell_id: str, files: dict[str, bytes],
                     device: str = "dev-a") -> None:
    record = cell(cell_id, device=device).to_row()
    with store.staging(cell_id) as staged:
        for name, content in files.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_bytes(content)
        store.commit(record, staged)


def test_artifacts_download_with_their_hash(server):
    _cell_with_files(server.store, "c1", {"model.onnx": b"onnx-bytes", "sub/pred.csv": b"1,2"})
    response = server.client.get("/api/v1/cells/c1/artifacts/model.onnx")
    assert response.status_code == 200 and response.content == b"onnx-bytes"
    assert response.headers["x-content-sha256"] == hashlib.sha256(b"onnx-bytes").hexdigest()
    assert server.client.get("/api/v1/cells/c1/artifacts/sub/pred.csv").content == b"1,2"


@pytest.mark.parametrize("path", ["/api/v1/cells/c1/artifacts/missing.bin",
                                  "/api/v1/cells/nocell/artifacts/model.onnx",
                                  "/api/v1/cells/c1/artifacts/sub%2F..%2Fmodel.onnx",
                                  "/api/v1/cells/c2/artifacts/model.onnx"])
def test_absent_artifacts_get_404(server, path):
    _cell_with_files(server.store, "c1", {"model.onnx": b"x", "sub/pred.csv": b"1"})
    assert server.upload(batch([cell("c2", artifact_hashes={"model.onnx": "0" * 64})])) \
        .status_code == 200
    assert server.client.get(path).status_code == 404


def test_a_damaged_artifact_is_not_served(server):
    _cell_with_files(server.store, "c1", {"model.onnx": b"good"})
    (server.store.artifact_dir("c1") / "model.onnx").write_bytes(b"evil")
    assert server.client.get("/api/v1/cells/c1/artifacts/model.onnx").status_code == 404


def test_a_record_cannot_point_outside_its_artifacts(server):
    _cell_with_files(server.store, "c1", {"model.onnx": b"x"})
    secret = server.store.root / "secret.txt"
    secret.write_text("secret")
    with Session(server.store.engine) as session, session.begin():
        row = session.get(CellRecord, "c1")
        row.artifact_hashes = {"../../secret.txt": hashlib.sha256(b"secret").hexdigest()}
    response = server.client.get("/api/v1/cells/c1/artifacts/..%2F..%2Fsecret.txt")
    assert response.status_code == 404


def test_report_renders_the_servers_records(filled):
    response = filled.client.get("/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<html" in html.lower() and "kvasir" in html and "pact" in html



def test_a_busy_report_answers_503_at_once_and_uploads_go_on(server):
    """While a report is being built, more /report requests get 503 with Retry-After instead of
    each waiting in one of the worker threads that uploads need too."""
    from bench.server.routes import pages

    burst = 50
    with TestClient(server.client.app) as client, ThreadPoolExecutor(burst + 1) as pool:
        pages._report_lock.acquire()
        try:
            reports = [pool.submit(client.get, "/report") for _ in range(burst)]
            answered, _ = wait(reports, timeout=30)
            upload = pool.submit(client.post, "/api/v1/uploads", json=body(batch([cell("c1")])),
                                 headers=bearer(server.token))
            uploaded, _ = wait([upload], timeout=30)
        finally:
            pages._report_lock.release()
        assert len(answered) == burst and uploaded
        assert {r.result().status_code for r in reports} == {503}
        assert all(r.result().headers["retry-after"].isdigit() for r in reports)
        assert upload.result().status_code == 200
        assert client.get("/report").status_code == 200

def test_healthz_and_openapi(server):
    assert server.client.get("/healthz").json() == {"status": "ok", "schema": migrate.head()}
    schema = server.client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/api/v1/uploads", "/api/v1/records", "/api/v1/records/known", "/api/v1/whoami",
            "/api/v1/devices", "/api/v1/cells/{cell_id}/artifacts/{path}", "/report",
            "/healthz"} <= set(paths)
    upload_body = paths["/api/v1/uploads"]["post"]["requestBody"]["content"]
    assert set(upload_body) == {"application/json", "application/gzip"}
    assert {"RecordBatch", "CellData", "MeasurementData"} <= set(schema["components"]["schemas"])
    assert server.client.get("/docs").status_code == 200


def test_settings_defaults():
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert str(default_data_dir("sqlite:////srv/medq/x.sqlite")) == "/srv/medq"
    assert str(default_data_dir("postgresql+psycopg://u@h/db")) == "medq-server"
    with pytest.raises(UsageError, match="unsupported database"):
        normalize_url("mysql://u@h/db")


def test_token_cli_prints_the_token_once(cli, tmp_path, db_url):
    data = ["--data", tmp_path / "srv", *(["--db", db_url] if db_url else [])]
    made = cli("serve", "token", "create", "--device", "pi-clinic", "--label", "ward 3", *data)
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("medq_") and len(token) > 40
    listed = cli("serve", "token", "list", *data)
    assert listed.exit_code == 0 and "pi-clinic" in listed.stdout and token not in listed.stdout
    app = create_app(ServerSettings.of(db_url, tmp_path / "srv"))
    with TestClient(app) as client:
        assert client.get("/api/v1/whoami", headers=bearer(token)).json()["device"] == \
            "pi-clinic"
        assert cli("serve", "token", "revoke", "1", *data).exit_code == 0
        assert client.get("/api/v1/whoami", headers=bearer(token)).status_code == 401
    assert cli("serve", "token", "revoke", "99", *data).exit_code == 2
    bad = cli("serve", "token", "create", "--device", "no spaces", *data)
    assert bad.exit_code == 2



def test_token_verbs_use_the_database_given_to_serve(cli, tmp_path, db_url, monkeypatch):
    """`bench serve --db URL token create` writes to URL (not ./medq-server); the token verb's
    own --db/--data win, and differing values given to both are refused."""
    monkeypatch.chdir(tmp_path)
    url = db_url or f"sqlite:///{tmp_path / 'srv' / 'server.sqlite'}"
    srv = tmp_path / "srv"
    made = cli("serve", "--db", url, "--data", srv, "token", "create", "--device", "pi-ward")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert not (tmp_path / "medq-server").exists()
    with TestClient(create_app(ServerSettings.of(url, srv))) as client:
        assert client.get("/api/v1/whoami", headers=bearer(token)).json()["device"] == "pi-ward"
    listed = cli("serve", "--db", url, "--data", srv, "token", "list", "--db", url)
    assert listed.exit_code == 0 and "pi-ward" in listed.stdout
    data = cli("serve", "--data", tmp_path / "other", "token", "create", "--device", "pi-2")
    assert data.exit_code == 0 and (tmp_path / "other" / "medq.sqlite").is_file()
    clash = cli("serve", "--db", url, "token", "revoke", "1", "--db", "sqlite:///elsewhere.db")
    assert clash.exit_code == 2 and "--db given twice" in clash.output
    clash = cli("serve", "--data", tmp_path / "a", "token", "list", "--data", tmp_path / "b")
    assert clash.exit_code == 2 and "--data given twice" in clash.output
    assert not (tmp_path / "medq-server").exists()


def test_server_extra_brings_the_postgresql_driver(monkeypatch, capsys):
    """`bench serve --db postgresql://...` needs psycopg: the `server` extra installs it, so a
    server without it is told to install that extra."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    modules = modules_by_extra([f'{r}; extra == "{e}"' for e, rs in extras.items() for r in rs])
    assert "psycopg" in modules["server"]
    monkeypatch.setattr("bench.extras.modules_by_extra", lambda: modules)

    @exits_on_usage_error
    def serve() -> None:
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    with pytest.raises(typer.Exit):
        serve()
    assert "pip install 'medq-bench[server]' (missing: psycopg)" in \
        capsys.readouterr().err.replace("\n", "")

def test_write_runs_a_conflicting_transaction_again(server):
    """A transaction that hits a unique-key conflict is rolled back and run again."""
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from bench.server import db
    from bench.server.tokens import utc_now

    attempts: list[int] = []

    def work(session: Session) -> int:
        attempts.append(1)
        row = {"name": "dev-x", "created_at": utc_now()}
        session.execute(insert(DeviceRecord).values(**row))
        if len(attempts) == 1:
            session.execute(insert(DeviceRecord).values(**row))
        return len(attempts)

    assert db.write(server.store.engine, work) == 2
    assert server.client.get("/api/v1/devices").json()["items"][1]["name"] == "dev-x"

    def always(session: Session) -> None:
        session.execute(insert(DeviceRecord).values(name="dev-a", created_at=utc_now()))

    with pytest.raises(IntegrityError):
        db.write(server.store.engine, always, attempts=2)
    with pytest.raises(ZeroDivisionError):
        db.write(server.store.engine, lambda session: 1 / 0)



def test_a_constraint_violation_is_a_422_without_retries(server, monkeypatch):
    """Only conflicts with a concurrent transaction are run again: a NOT NULL violation is
    answered 422 after one try, and nothing is written."""
    from sqlalchemy import insert

    tries: list[int] = []

    def ingest_in(session: Session, *_: Any) -> None:
        tries.append(1)
        session.execute(insert(DeviceRecord).values(name="dev-x", created_at=None))

    monkeypatch.setattr(server.store, "ingest_in", ingest_in)
    response = server.upload(batch([cell("c1")]))
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("the database refused the records: ")
    assert "null" in response.json()["detail"].lower()
    assert tries == [1]
    assert server.count(UploadRecord) == 0 and server.count(DeviceRecord) == 1


def test_stale_rows_after_the_retries_are_a_503(server, monkeypatch):
    from sqlalchemy.orm.exc import StaleDataError

    from bench.server import db

    tries: list[int] = []

    def ingest_in(*_: Any) -> None:
        tries.append(1)
        raise StaleDataError("UPDATE statement on table 'cells' expected to update 1 row(s)")

    monkeypatch.setattr(db, "ATTEMPTS", 2)
    monkeypatch.setattr(server.store, "ingest_in", ingest_in)
    response = server.upload(batch([cell("c1")]))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert tries == [1, 1]

def _bundle_bytes(tmp_path, device: str = "dev-a") -> bytes:
    from bench.exchange.bundle import export_bundle

    local = ResultsStore(tmp_path / f"local-{device}")
    _cell_with_files(local, "c1", {"model.onnx": b"onnx", "preds/test.csv": b"0,1"}, device)
    local.ingest(batch(measurements=[measurement("c1", device=device)]))
    out = export_bundle(local, tmp_path / f"{device}.tar.gz", artifacts="all").path
    return out.read_bytes()


def _post_bundle(server: Server, content: bytes, token: str | None = None) -> Any:
    return server.client.post("/api/v1/uploads", content=content, headers={
        **bearer(token or server.token), "Content-Type": "application/gzip"})


def test_bundle_upload_stores_records_and_artifacts(server, tmp_path):
    content = _bundle_bytes(tmp_path)
    first = _post_bundle(server, content)
    assert first.status_code == 200, first.text
    assert first.json()["added"] == 2
    download = server.client.get("/api/v1/cells/c1/artifacts/preds/test.csv")
    assert download.status_code == 200 and download.content == b"0,1"
    assert _post_bundle(server, content).json()["unchanged"] == 2
    assert server.count(CellRecord) == 1 and server.count(MeasurementRecord) == 1


def test_bad_bundles_are_refused_and_nothing_written(server, tmp_path):
    content = _bundle_bytes(tmp_path)
    truncated = _post_bundle(server, content[:len(content) // 2])
    assert truncated.status_code == 422 and "bundle" in truncated.json()["detail"]
    foreign = _post_bundle(server, _bundle_bytes(tmp_path, "dev-b"))
    assert foreign.status_code == 403
    assert server.count(CellRecord) == 0 and server.count(MeasurementRecord) == 0
    assert not any(server.store.artifact_root.glob("c1/*"))
