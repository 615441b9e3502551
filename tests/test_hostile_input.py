"""Hostile input to the results server, uploads, bundle import, `bench device pull` and
`bench measure` (issue 31): a clear refusal (422 / exit 2) instead of a 5xx or a traceback, and
memory and disk bounded by what the input is allowed to be."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bench.errors import UsageError
from bench.exchange.bundle import BundleError, export_bundle, read_bundle
from bench.exchange.client import BadResponse, RetryPolicy, ServerClient
from bench.exchange.manifest import parse_manifest, seal
from bench.exchange.pull import pull
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.bounds import MAX_JSON_BYTES, MAX_SAMPLES, MAX_TEXT_CHARS, latency_summary
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


def test_a_deeply_nested_json_upload_is_422(api):
    client, token = api
    response = client.post("/api/v1/uploads", content=b'{"cells":' + deep(100_000) + b"}",
                           headers={**bearer(token), "Content-Type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize("verb", [("import",), ("device", "pull", "--from")])
def test_cli_reading_a_deeply_nested_manifest_exits_2(cli, tmp_path, verb):
    path = tmp_path / "deep.tar.gz"
    path.write_bytes(tar_gz({"medq-bundle/manifest.json": deep(100_000)}))
    result = cli(*verb, path, "--store", tmp_path / "store")
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
    assert stored["good"].details["model_path"] == "artifacts/good/model.onnx"


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
    with pytest.raises(BundleError, match="200 times its compressed size"):
        read_bundle(bomb, workdir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_bomb_upload_is_refused_before_it_is_unpacked(api):
    client, token = api
    bomb = sealed_bundle({"records/cells.jsonl": b"\n" * (48 << 20)})
    response = client.post("/api/v1/uploads", content=bomb,
                           headers={**bearer(token), "Content-Type": "application/gzip"})
    limit = 200 * len(bomb) + (1 << 20)
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


# ---------------------------------------------------------------- 4: physically possible figures


def summarised(samples_s: list[float], **changes: Any) -> dict[str, Any]:
    """A measurement of dev-a with ``samples_s`` and the summary they give, then ``changes``."""
    return measurement("c1").model_dump(mode="json") | {"samples_s": samples_s} \
        | latency_summary(samples_s) | changes


SAMPLES = [0.001, 0.0012, 0.0011, 0.0035, 0.0009]


def test_the_summary_is_recomputed_as_numpy_computes_it():
    import numpy as np

    ms = np.array(SAMPLES) * 1000
    summary = latency_summary(SAMPLES)
    assert summary["latency_ms_mean"] == pytest.approx(ms.mean(), rel=1e-12)
    assert summary["latency_ms_std"] == pytest.approx(ms.std(ddof=1), rel=1e-12)
    for q in (50, 90, 99):
        assert summary[f"latency_ms_p{q}"] == pytest.approx(np.percentile(ms, q), rel=1e-12)
    from bench.measure.protocol import summarize

    theirs = summarize(ms.tolist())
    assert summary["latency_ms_p99"] == pytest.approx(theirs["p99"], rel=1e-12)
    assert summary["latency_cv"] == pytest.approx(theirs["cv"], rel=1e-12)


@pytest.mark.parametrize("changes, match", [
    ({"latency_ms_p50": -1.0}, "latency_ms_p50 is -1.0; it must be > 0"),
    ({"peak_rss_mb": -5.0}, "peak_rss_mb is -5.0"),
    ({"size_bytes": 0}, "size_bytes is 0"),
    ({"latency_ms_p99": 1.0, "latency_ms_p90": 3.0}, "latency_ms_p90 3.0 is above"),
    ({"latency_ms_p50": 1.05}, "latency_ms_p50 is 1.05, but its 5 samples_s give"),
    ({"samples_s": []}, "a summary without the samples_s"),
])
def test_impossible_measurements_are_422_and_leave_the_good_one(api, changes, match):
    client, token = api
    headers = bearer(token)
    good = {"cells": [cell("c1").model_dump(mode="json")],
            "measurements": [summarised(SAMPLES)]}
    assert client.post("/api/v1/uploads", json=good, headers=headers).status_code == 200
    bad = summarised(SAMPLES, finished_at="2026-01-02T00:00:00") | changes
    response = client.post("/api/v1/uploads", json={"cells": [], "measurements": [bad]},
                           headers=headers)
    assert response.status_code == 422 and match in response.text, response.text
    stored = client.get("/api/v1/records", params={"kind": "measurement"}).json()["items"]
    assert [m["latency_ms_p50"] for m in stored] == [good["measurements"][0]["latency_ms_p50"]]


def test_nan_and_infinity_are_refused_not_nulled(api):
    client, token = api
    for text in ("NaN", "Infinity"):
        raw = json.dumps({"cells": [], "measurements": [summarised(SAMPLES)]}).replace(
            '"peak_rss_mb": 50.0', f'"peak_rss_mb": {text}')
        response = client.post("/api/v1/uploads", content=raw,
                               headers={**bearer(token), "Content-Type": "application/json"})
        assert response.status_code == 422 and "peak_rss_mb" in response.text


def test_cli_import_of_an_impossible_measurement_exits_2(cli, tmp_path):
    bad = summarised(SAMPLES, latency_ms_p50=-1.0)
    line = json.dumps(bad, separators=(",", ":")).encode() + b"\n"
    bundle = tmp_path / "bad.tar.gz"
    bundle.write_bytes(sealed_bundle({"records/measurements.jsonl": line},
                                     counts={"cells": 0, "measurements": 1}))
    result = cli("import", bundle, "--store", tmp_path / "store")
    assert result.exit_code == 2 and "latency_ms_p50 is -1.0" in result.output
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------- 5: what leaves a machine


def test_a_bundle_carries_no_absolute_path_of_its_store(tmp_path):
    store = ResultsStore(tmp_path / "clinic-pi-of-dr-smith")
    store.ingest(batch([cell("c1")]))
    export_bundle(store, tmp_path / "b.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        everything = b"".join(tar.extractfile(m).read() for m in tar if m.isfile())
    assert str(tmp_path).encode() not in everything and b"dr-smith" not in everything


def test_junk_after_the_archive_is_refused_zero_padding_is_not(tmp_path):
    good = sealed_bundle({})
    tar = gzip.decompress(good)
    read_bundle(gzip.compress(tar + bytes(10240)), workdir=tmp_path).close()
    for junk in (b"\x01", b"junk" * 1000, bytes(600) + b"x"):
        with pytest.raises(BundleError, match="data after the end of its archive"):
            read_bundle(gzip.compress(tar + junk), workdir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_server_refuses_version_1_bundles_and_import_still_reads_them(api, tmp_path):
    client, token = api
    bundle = _v1(sealed_bundle({}))
    with read_bundle(bundle, workdir=tmp_path) as loaded:
        assert loaded.manifest.version == 1
    response = client.post("/api/v1/uploads", content=bundle,
                           headers={**bearer(token), "Content-Type": "application/gzip"})
    assert response.status_code == 422 and "bundle version 1" in response.text


def _v1(bundle: bytes) -> bytes:
    """``bundle`` with its manifest made version 1 (no sizes, no devices), resealed."""
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        content = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    document = json.loads(content["medq-bundle/manifest.json"])
    document.update(version=1)
    del document["sizes"], document["devices"]
    content["medq-bundle/manifest.json"] = seal(document)
    return tar_gz(content)


def test_keys_belong_to_the_device_not_to_the_token(api, cli, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench.exchange.signing import SIGNATURE_HEADER, Signer, sign_upload
    from bench.server.tokens import revoke_token

    client, _ = api
    engine = client.app.state.store.engine
    signer = Signer(Ed25519PrivateKey.generate(), "pi")
    keyed_id, _ = create_token(engine, "pi", public_key=signer.public)
    revoke_token(engine, keyed_id)
    _, plain = create_token(engine, "pi")
    records = batch([cell("c1", device="pi")]).model_dump_json().encode()
    headers = {**bearer(plain), "Content-Type": "application/json"}
    unsigned = client.post("/api/v1/uploads", content=records, headers=headers)
    assert unsigned.status_code == 403 and "must be signed" in unsigned.text
    signed = client.post("/api/v1/uploads", content=records, headers={
        **headers, SIGNATURE_HEADER: sign_upload(signer, records)})
    assert signed.status_code == 200, signed.text
    with pytest.raises(UsageError, match="cannot register one"):
        create_token(engine, "pi", public_key=signer.public, allow_unsigned=True)
    _, freed = create_token(engine, "pi", allow_unsigned=True)
    again = batch([cell("c2", device="pi")]).model_dump_json().encode()
    assert client.post("/api/v1/uploads", content=again, headers={
        **bearer(freed), "Content-Type": "application/json"}).status_code == 200


def test_token_create_says_whether_uploads_must_be_signed(cli, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench.exchange.signing import Signer

    public = tmp_path / "pi.pub"
    key = Signer(Ed25519PrivateKey.generate(), "pi").public
    public.write_text(key.line() + "\n")
    data = ("--data", tmp_path / "srv")
    keyed = cli("serve", "token", "create", "--device", "pi", "--public-key", public, *data)
    assert keyed.exit_code == 0 and f"signed by key {key.fingerprint}" in keyed.output
    assert cli("serve", "token", "revoke", "1", *data).exit_code == 0
    plain = cli("serve", "token", "create", "--device", "pi", *data)
    assert plain.exit_code == 0 and f"signed by key {key.fingerprint}" in plain.output
    freed = cli("serve", "token", "create", "--device", "pi", "--allow-unsigned", *data)
    assert freed.exit_code == 0 and "need no signature" in freed.output


def test_pull_takes_cells_only_from_the_devices_it_trusts(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench.exchange.bundle import BUNDLE_CONTENT_TYPE
    from bench.exchange.signing import SIGNATURE_HEADER, Signer, sign_upload
    from tests.exchange_records import cell as hand_cell

    app = create_app(ServerSettings.of(None, tmp_path / "srv"))
    signer = Signer(Ed25519PrivateKey.generate(), "ws")
    tokens = {"ws": create_token(app.state.store.engine, "ws", public_key=signer.public)[1],
              "evil": create_token(app.state.store.engine, "evil")[1]}
    with TestClient(app) as http:
        for device, cell_id in (("evil", "squat"), ("ws", "real")):
            local = ResultsStore(tmp_path / device)
            with local.staging(cell_id) as staged:
                (staged / "model.onnx").write_bytes(f"model by {device}".encode())
                local.commit(hand_cell(cell_id, device=device).to_row(), staged)
            body = export_bundle(local, tmp_path / f"{device}.tar.gz",
                                 artifacts="deploy").path.read_bytes()
            headers = {**bearer(tokens[device]), "Content-Type": BUNDLE_CONTENT_TYPE}
            if device == "ws":
                headers[SIGNATURE_HEADER] = sign_upload(signer, body)
            assert http.post("/api/v1/uploads", content=body, headers=headers).status_code == 200
        reader = ServerClient(http)
        taken = pull(tmp_path / "pi", "http://testserver", RecordFilter(), server=reader)
        assert taken.cells_from == "ws (the devices with registered keys)"
        assert [c.cell_id for c in ResultsStore(tmp_path / "pi").records()] == ["real"]
        chosen = pull(tmp_path / "pi2", "http://testserver", RecordFilter(), server=reader,
                      cells_from=["evil"])
        assert chosen.cells == 1
        assert [c.cell_id for c in ResultsStore(tmp_path / "pi2").records()] == ["squat"]


def test_a_bundle_line_with_nan_is_refused(cli, tmp_path):
    line = json.dumps(summarised(SAMPLES)).replace('"peak_rss_mb": 50.0', '"peak_rss_mb": NaN')
    bundle = tmp_path / "nan.tar.gz"
    bundle.write_bytes(sealed_bundle({"records/measurements.jsonl": line.encode() + b"\n"},
                                     counts={"cells": 0, "measurements": 1}))
    result = cli("import", bundle, "--store", tmp_path / "store")
    assert result.exit_code == 2 and "peak_rss_mb" in result.output and "finite" in result.output


def test_a_squatted_cell_id_gives_way_to_the_signed_device_and_never_the_reverse(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench.exchange.bundle import BUNDLE_CONTENT_TYPE
    from bench.exchange.signing import SIGNATURE_HEADER, Signer, sign_upload
    from tests.exchange_records import cell as hand_cell

    app = create_app(ServerSettings.of(None, tmp_path / "srv"))
    signer = Signer(Ed25519PrivateKey.generate(), "ws")
    tokens = {"ws": create_token(app.state.store.engine, "ws", public_key=signer.public)[1],
              "evil": create_token(app.state.store.engine, "evil")[1]}

    def upload(http: TestClient, device: str, minute: int) -> httpx.Response:
        local = ResultsStore(tmp_path / f"{device}{minute}")
        with local.staging("same") as staged:
            (staged / "model.onnx").write_bytes(f"model by {device}".encode())
            local.commit(hand_cell("same", device=device, minute=minute).to_row(), staged)
        body = export_bundle(local, tmp_path / f"{device}{minute}.tar.gz",
                             artifacts="deploy").path.read_bytes()
        headers = {**bearer(tokens[device]), "Content-Type": BUNDLE_CONTENT_TYPE}
        if device == "ws":
            headers[SIGNATURE_HEADER] = sign_upload(signer, body)
        return http.post("/api/v1/uploads", content=body, headers=headers)

    with TestClient(app) as http:
        assert upload(http, "evil", 9).status_code == 200
        assert upload(http, "ws", 0).status_code == 200
        stored = app.state.store.get("same")
        assert stored.device == "ws"
        model = http.get("/api/v1/cells/same/artifacts/model.onnx")
        assert model.content == b"model by ws"
        refused = upload(http, "evil", 20)
        assert refused.status_code == 403 and "stored as device 'ws'" in refused.text


def test_a_records_page_stops_at_its_byte_budget_and_the_client_reads_on(api, monkeypatch):
    from bench.server import record_json

    client, token = api
    big = {"junk": "z" * 200_000}
    records = batch([cell(f"c{i}").model_copy(update={"provenance": big}) for i in range(7)])
    assert upload_json(client, token, records).status_code == 200
    monkeypatch.setattr(record_json, "PAGE_BYTES", 450_000)
    first = client.get("/api/v1/records", params={"kind": "cell"}).json()
    assert len(first["items"]) == 2 and first["next_offset"] == 2 and first["total"] == 7
    reader = ServerClient(client)
    assert sorted(r["cell_id"] for r in reader.records("cell", {})) == \
        [f"c{i}" for i in range(7)]
