"""The results server as a real process (`bench serve`, uvicorn on 127.0.0.1), on SQLite and on
PostgreSQL: concurrent uploaders lose nothing, and SIGKILL loses no acknowledged upload."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.records import RecordBatch
from tests.server_helpers import LiveServer, batch, bearer, body, cell, measurement


def _server_store(tmp_path, db_url) -> ResultsStore:
    settings = ServerSettings.of(db_url, tmp_path / "srv")
    return ResultsStore(settings.data_dir, settings.db_url)


def _records(device: str, n: int) -> RecordBatch:
    return batch([cell(f"{device}-{i}", device=device) for i in range(n)],
                 [measurement(f"{device}-{i}", device=device, profile=p)
                  for i in range(n) for p in ("host", "pi4")])


def _chunks(records: RecordBatch, size: int) -> list[RecordBatch]:
    cells, measurements = records.cells, records.measurements
    return [batch(cells[i:i + size], measurements[2 * i:2 * (i + size)])
            for i in range(0, len(cells), size)]


def _totals(url: str) -> tuple[int, int]:
    cells = httpx.get(f"{url}/api/v1/records", params={"kind": "cell", "limit": 1}).json()
    measured = httpx.get(f"{url}/api/v1/records",
                         params={"kind": "measurement", "limit": 1}).json()
    return cells["total"], measured["total"]


def _known(url: str, records: RecordBatch) -> set[str]:
    hashes = [r.content_hash() for r in (*records.cells, *records.measurements)]
    return set(httpx.post(f"{url}/api/v1/records/known", json={"hashes": hashes}).json()["known"])


@pytest.fixture
def live(tmp_path, db_url) -> Iterator[LiveServer]:
    _server_store(tmp_path, db_url).engine.dispose()
    server = LiveServer(tmp_path / "srv", db_url).start()
    yield server
    server.kill()


def test_four_concurrent_uploaders_lose_nothing(live, tmp_path, db_url):
    """Two devices, two uploaders each sending all of their device's records in opposite
    orders, so that uploads race to insert the same new keys."""
    engine = _server_store(tmp_path, db_url).engine
    work: list[tuple[str, list[RecordBatch]]] = []
    everything = batch()
    for device in ("dev-a", "dev-b"):
        _, token = create_token(engine, device)
        records = _records(device, 24)
        everything = batch([*everything.cells, *records.cells],
                           [*everything.measurements, *records.measurements])
        chunks = _chunks(records, 3)
        work += [(token, chunks), (token, chunks[::-1])]
    start = threading.Barrier(len(work))
    answers: list[list[Any]] = [[] for _ in work]

    def upload(index: int) -> None:
        token, chunks = work[index]
        with httpx.Client(base_url=live.url, headers=bearer(token), timeout=60) as client:
            start.wait()
            for chunk in chunks:
                response = client.post("/api/v1/uploads", json=body(chunk))
                answers[index].append((response.status_code, response.json()))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    replies = [reply for answer in answers for reply in answer]
    assert len(replies) == sum(len(chunks) for _, chunks in work)
    assert all(status == 200 for status, _ in replies), [r for r in replies if r[0] != 200][:3]
    assert sum(reply["added"] for _, reply in replies) == len(everything)
    assert sum(reply["unchanged"] for _, reply in replies) == len(everything)
    assert _totals(live.url) == (48, 96)
    assert _known(live.url, everything) == {r.content_hash() for r in
                                            (*everything.cells, *everything.measurements)}


def test_acknowledged_upload_survives_kill_9(live, tmp_path, db_url):
    _, token = create_token(_server_store(tmp_path, db_url).engine, "dev-a")
    records = _records("dev-a", 5)
    response = httpx.post(f"{live.url}/api/v1/uploads", json=body(records),
                          headers=bearer(token))
    assert response.status_code == 200 and response.json()["added"] == 15
    live.kill()
    again = LiveServer(live.data, db_url).start()
    try:
        assert _totals(again.url) == (5, 10)
        assert len(_known(again.url, records)) == 15
    finally:
        again.kill()


def test_upload_cut_by_a_restart_completes_on_retry(live, tmp_path, db_url):
    _, token = create_token(_server_store(tmp_path, db_url).engine, "dev-a")
    records = _records("dev-a", 6)
    payload = httpx.Request("POST", "/", json=body(records)).read()
    resume = threading.Event()
    failure: list[BaseException] = []

    def halves() -> Iterator[bytes]:
        yield payload[:len(payload) // 2]
        resume.wait(timeout=60)
        yield payload[len(payload) // 2:]

    def send() -> None:
        try:
            httpx.post(f"{live.url}/api/v1/uploads", content=halves(), timeout=60,
                       headers={**bearer(token), "Content-Type": "application/json"})
        except httpx.HTTPError as err:
            failure.append(err)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)
    live.kill()
    resume.set()
    sender.join(timeout=60)
    assert failure, "the cut upload should fail on the client"
    again = LiveServer(live.data, db_url).start()
    try:
        assert _totals(again.url) == (0, 0)
        url = f"{again.url}/api/v1/uploads"
        retried = httpx.post(url, json=body(records), headers=bearer(token))
        assert retried.status_code == 200 and retried.json()["added"] == 18
        twice = httpx.post(url, json=body(records), headers=bearer(token))
        assert twice.json()["unchanged"] == 18
        assert _totals(again.url) == (6, 12)
    finally:
        again.kill()
