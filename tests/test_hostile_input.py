"""Hostile input to the results server, uploads, bundle import, `bench device pull` and
`bench measure` (issue 31): a clear refusal (422 / exit 2) instead of a 5xx or a traceback, and
memory and disk bounded by what the input is allowed to be."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bench.errors import UsageError
from bench.exchange.bundle import BundleError, read_bundle
from bench.exchange.client import BadResponse, RetryPolicy, ServerClient
from bench.exchange.manifest import parse_manifest, seal
from bench.exchange.pull import pull
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.bounds import MAX_JSON_BYTES, MAX_SAMPLES, MAX_TEXT_CHARS
from bench.store.query import RecordFilter
from tests.server_helpers import batch, bearer, body, cell, measurement


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
    RecordFilter(methods=[f"m{i}*" for i in range(100)])
    with pytest.raises(UsageError, match="at most 100"):
        RecordFilter(methods=[f"m{i}*" for i in range(101)])


def test_cli_export_with_an_invalid_pattern_exits_2(cli, tmp_path):
    ResultsStore(tmp_path / "store")
    result = cli("export", "--store", tmp_path / "store", "--out", tmp_path / "b.tar.gz",
                 "--dataset", "[z-a]")
    assert result.exit_code == 2 and "invalid pattern '[z-a]'" in result.output


# ---------------------------------------------------------------- a hostile server, pulled from

MODEL = b"onnx bytes of a tiny model"


def deployable(cell_id: str = "a", size: int = len(MODEL), device: str = "ws") -> dict[str, Any]:
    """A deployable cell record as GET /records lists it (model.onnx of ``size`` bytes)."""
    record = cell(cell_id, device=device, artifact_hashes={
        "model.onnx": hashlib.sha256(MODEL).hexdigest()},
        metrics={"deploy": {"onnx_file": "model.onnx", "shipped_file": "model.onnx",
                            "columns": {"size_bytes": size, "shipped_size_bytes": size}}})
    return {**record.model_dump(mode="json"), "record_hash": record.content_hash()}


def hostile(pages: Callable[[int], Any], file: Callable[[], httpx.Response] | None = None,
            devices: list[dict[str, Any]] | None = None) -> tuple[ServerClient, list[int]]:
    """A client of a fake server: ``pages(offset)`` is the JSON of GET /records, ``file()``
    answers every artifact download; the offsets asked are listed."""
    asked: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/records"):
            offset = int(request.url.params["offset"])
            asked.append(offset)
            if len(asked) > 50:
                raise AssertionError("the client kept asking for pages")
            answer = pages(offset)
            return httpx.Response(200, content=answer) if isinstance(answer, bytes) else \
                httpx.Response(200, json=answer)
        if request.url.path.endswith("/devices"):
            return httpx.Response(200, json={"items": devices or []})
        assert file is not None
        return file()

    retry = RetryPolicy(attempts=1, sleep=lambda _s: None)
    client = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://mock")
    return ServerClient(client, retry=retry), asked


def page(items: list[Any], total: int, next_offset: int | None) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": 1000, "offset": 0,
            "next_offset": next_offset}


def test_pull_of_invalid_records_exits_2_naming_the_record_and_makes_no_store(tmp_path):
    bad = {**deployable("a"), "w_bits": 99}
    server, _ = hostile(lambda _o: page([deployable("z"), bad], 2, None))
    with pytest.raises(UsageError, match=r"record 2 \(cell 'a'\) is invalid: w_bits"):
        pull(tmp_path / "pi", "http://mock", RecordFilter(), server=server)
    assert not (tmp_path / "pi").exists()
    for answer in (b"{" * 100_000, b"not json", {"items": "x", "total": 1}):
        server, _ = hostile(lambda _o, a=answer: a)
        with pytest.raises(BadResponse):
            pull(tmp_path / "pi", "http://mock", RecordFilter(), server=server)
    assert not (tmp_path / "pi").exists()


@pytest.mark.parametrize("next_offset, total", [(0, 5), (None, 0), (7, 5)])
def test_pages_that_do_not_advance_or_exceed_the_total_are_refused(tmp_path, next_offset, total):
    server, asked = hostile(lambda o: page([deployable(f"c{o}")], total,
                                           o if next_offset == 0 else next_offset))
    with pytest.raises(BadResponse):
        pull(tmp_path / "pi", "http://mock", RecordFilter(), server=server)
    assert len(asked) <= 2 and not (tmp_path / "pi").exists()


def test_pull_refuses_a_download_larger_than_the_cell_records(tmp_path):
    body = _Chunks([b"x" * (1 << 16)] * 64)
    server, _ = hostile(lambda _o: page([deployable()], 1, None),
                        lambda: httpx.Response(200, stream=body))
    with pytest.raises(BadResponse, match=f"larger than {len(MODEL)} bytes"):
        pull(tmp_path / "pi", "http://mock", RecordFilter(), server=server)
    assert not (tmp_path / "pi").exists()
    assert body.read_bytes <= len(MODEL) + (1 << 16)
    served = lambda: httpx.Response(200, content=MODEL)  # noqa: E731
    server, _ = hostile(lambda _o: page([deployable()], 1, None), served)
    assert pull(tmp_path / "pi", "http://mock", RecordFilter(), server=server).cells == 1


def test_a_content_length_below_the_body_stops_the_download(tmp_path):
    lying = httpx.Response(200, headers={"Content-Length": "4"},
                           stream=_Chunks([MODEL]))
    server, _ = hostile(lambda _o: page([deployable()], 1, None), lambda: lying)
    with pytest.raises(BadResponse, match="larger than 4 bytes"):
        server.download("/file", tmp_path / "f", 1 << 20)
    assert not (tmp_path / "f").exists()


class _Chunks(httpx.SyncByteStream):
    """A response body that arrives a chunk at a time, counting what was read of it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.read_bytes = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read_bytes += len(chunk)
            yield chunk


# ---------------------------------------------------------------- bench measure


def deployed_store(root: Path, shipped: dict[str, str]) -> ResultsStore:
    """A store of hand-made deployed cells, one a cell id, each with a tiny real ONNX model
    and the deploy record naming ``shipped[cell_id]`` as the file to measure."""
    import torch
    from torch import nn

    from bench.deploy import export_fp32
    from tests.exchange_records import cell as hand_cell

    store = ResultsStore(root)
    for cell_id, name in shipped.items():
        with store.staging(cell_id) as staged:
            export_fp32(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.zeros(1, 3, 2, 2),
                        staged / "model.onnx")
            row = hand_cell(cell_id, device="ws").to_row()
            row.metrics = {"deploy": {"onnx_file": "model.onnx", "shipped_file": name,
                                      "input_shape": [3, 2, 2], "columns": {}}}
            store.commit(row, staged)
    return store


def test_a_shipped_file_outside_the_store_fails_that_cell_only(tmp_path):
    from bench.measure import load_profile
    from bench.measure.runner import measure_store
    from bench.store.measurements import measurements

    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(b"not the cell's model")
    store = deployed_store(tmp_path / "s", {"good": "model.onnx", "bad": str(elsewhere)})
    (tmp_path / "quick.toml").write_text('description = "quick"\nwarmup = 1\n'
                                         'min_repetitions = 3\nmin_duration_s = 0.0\n')
    summary = measure_store(store, load_profile(str(tmp_path / "quick.toml")), device="pi",
                            quiet=True)
    assert summary.measured == ["good"] and summary.failed == ["bad"]
    assert str(elsewhere) in summary.errors["bad"]
    stored = {m.cell_id: m for m in measurements(store.engine)}
    assert stored["bad"].status == "failed" and "outside the cell's folder" in stored["bad"].error
    assert stored["good"].status == "ok"


# ---------------------------------------------------------------- 3: bounded memory and disk


def upload_json(client: TestClient, token: str, records: Any) -> httpx.Response:
    return client.post("/api/v1/uploads", json=body(records), headers=bearer(token))


@pytest.mark.parametrize("change, field", [
    (lambda: {"error": "x" * (MAX_TEXT_CHARS + 1)}, "error"),
    (lambda: {"provenance": {"junk": "y" * MAX_JSON_BYTES}}, "provenance"),
])
def test_an_oversized_text_or_json_field_is_422(api, change, field):
    client, token = api
    record = cell("c1").model_dump(mode="json") | change()
    response = client.post("/api/v1/uploads", json={"cells": [record], "measurements": []},
                           headers=bearer(token))
    assert response.status_code == 422, response.text
    assert field in response.text
    assert upload_json(client, token, batch([cell("c1", error="x" * MAX_TEXT_CHARS)])
                       ).status_code == 200


def test_samples_are_capped_at_what_the_protocol_takes():
    from bench.measure.profiles import Profile
    from bench.measure.protocol import MAX_SAMPLES as PROTOCOL_MAX
    from bench.measure.protocol import run_protocol
    from bench.store.records import MeasurementData

    assert PROTOCOL_MAX == MAX_SAMPLES
    ticks = iter(range(10**9))
    samples = run_protocol(lambda: None, 0, 1, 1e9, clock=lambda: next(ticks) * 1e-9,
                           max_samples=50)
    assert len(samples) == 50
    with pytest.raises(ValidationError):
        Profile(description="x", min_repetitions=MAX_SAMPLES + 1)
    record = measurement("c1").model_dump() | {"samples_s": [1e-3] * (MAX_SAMPLES + 1)}
    with pytest.raises(ValidationError, match="samples_s"):
        MeasurementData.model_validate(record)


def sealed_bundle(members: dict[str, bytes], **manifest: Any) -> bytes:
    """A gzip'd bundle of ``members`` with a valid version 2 manifest (no records unless
    given)."""
    members = {"records/cells.jsonl": b"", "records/measurements.jsonl": b"", **members}
    document = {"format": "medq-bundle", "version": 2, "created_at": "2026-01-01T00:00:00",
                "source": {"device": "dev-a"}, "filters": {},
                "counts": {"cells": 0, "measurements": 0},
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in members.items()},
                "sizes": {n: len(d) for n, d in members.items()}, "devices": ["dev-a"],
                **manifest}
    return tar_gz({"medq-bundle/manifest.json": seal(document),
                   **{f"medq-bundle/{n}": d for n, d in members.items()}})


def test_decompression_is_bounded_by_the_compressed_size(tmp_path):
    bomb = sealed_bundle({"records/cells.jsonl": b"\n" * (48 << 20)})
    assert len(bomb) < 200 << 10
    with pytest.raises(BundleError, match="50 times its compressed size"):
        read_bundle(bomb, workdir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_bomb_upload_is_refused_before_it_is_unpacked(api):
    client, token = api
    bomb = sealed_bundle({"records/cells.jsonl": b"\n" * (48 << 20)})
    response = client.post("/api/v1/uploads", content=bomb,
                           headers={**bearer(token), "Content-Type": "application/gzip"})
    limit = 50 * len(bomb) + (1 << 20)
    assert response.status_code == 422
    assert f"records/cells.jsonl is larger than the limit of {limit} bytes" in response.text


def test_concurrent_uploads_share_a_bounded_staging_space(api):
    client, token = api
    staging = client.app.state.staging
    bundle = sealed_bundle({})
    headers = {**bearer(token), "Content-Type": "application/gzip"}
    with staging.reserve(staging.total - 1000):
        busy = client.post("/api/v1/uploads", content=bundle, headers=headers)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "staging space" in busy.text
    assert staging.held == 0
    assert client.post("/api/v1/uploads", content=bundle, headers=headers).status_code == 200
