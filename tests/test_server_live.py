"""The results server as a real process (`bench serve`, uvicorn on 127.0.0.1), on SQLite and on
PostgreSQL: concurrent uploaders lose nothing, two devices racing for one new cell leave one
copy, and SIGKILL loses no acknowledged upload."""

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
    orders. The two devices' uploads run concurrently; one device's uploads take turns (its
    device row is locked on PostgreSQL, SQLite's writers are serial), so every record is added
    by exactly one upload and found unchanged by the other, with nothing lost or doubled. The
    race for the same new key, which is retried, is in the next test."""
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



def test_two_devices_racing_for_a_new_cell_leave_one_copy(live, tmp_path, db_url):
    """Two devices upload cells with the same new ids at once, round after round: the first
    to commit owns them; the other's insert conflicts on PostgreSQL (a unique violation, run
    again) or waits its turn on SQLite, then finds them another device's: 403, no 500, one
    copy of each cell."""
    engine = _server_store(tmp_path, db_url).engine
    tokens = {device: create_token(engine, device)[1] for device in ("dev-a", "dev-b")}
    rounds, cells = 6, 20
    for round_ in range(rounds):
        ids = [f"race-{round_}-{i}" for i in range(cells)]
        start = threading.Barrier(len(tokens))
        answers: dict[str, httpx.Response] = {}

        def upload(device: str, ids: list[str] = ids, start: threading.Barrier = start,
                   answers: dict[str, httpx.Response] = answers) -> None:
            records = batch([cell(i, device=device) for i in ids],
                            [measurement(i, device=device) for i in ids])
            with httpx.Client(base_url=live.url, headers=bearer(tokens[device]),
                              timeout=60) as client:
                start.wait()
                answers[device] = client.post("/api/v1/uploads", json=body(records))

        threads = [threading.Thread(target=upload, args=(device,)) for device in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        statuses = {device: answer.status_code for device, answer in answers.items()}
        assert sorted(statuses.values()) == [200, 403], {d: a.text for d, a in answers.items()}
        winner = next(device for device, code in statuses.items() if code == 200)
        assert answers[winner].json()["added"] == 2 * cells
        assert "stored as device" in next(a for a in answers.values()
                                         if a.status_code == 403).json()["detail"]
        stored = httpx.get(f"{live.url}/api/v1/records", params={
            "kind": "cell", "limit": 1000}).json()["items"]
        mine = [item for item in stored if item["cell_id"] in ids]
        assert sorted(item["cell_id"] for item in mine) == sorted(ids)
        assert {item["device"] for item in mine} == {winner}
    assert _totals(live.url) == (rounds * cells, rounds * cells)
    if db_url:
        log = (live.data.parent / f"{live.data.name}-server.log").read_text()
        assert "write conflict (UniqueViolation)" in log, "no round raced for the same key"

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
