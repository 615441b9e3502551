"""What a signed upload costs: signing the bodies (`bench upload`), verifying them (the server),
and a whole upload signed vs unsigned, in ms per 1,000 records.

Runs only with `make bench` (MEDQ_BENCH=1), or:

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_signing.py -o addopts="" -s

Records: 500 cells x 4 measurements (100 latency samples each), 2,500 records, sent in bodies of
500 (the default batch). Signing and verifying are timed on those bodies alone (SHA-256 of the
body + Ed25519), best of ROUNDS. The whole upload (`upload_store` into the server app in
process, SQLite) runs ROUNDS times each way, alternating, each into a fresh server; printed:
the medians and their difference. No target is asserted.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from fastapi.testclient import TestClient

from bench.exchange.client import ServerClient
from bench.exchange.signing import PublicKey, Signer, sign_upload, verify_upload
from bench.exchange.upload import upload_store
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.records import RecordBatch
from tests.exchange_records import synthetic_device

DEVICE = "bench-pi"
CELLS, PER_CELL, SAMPLES = 500, 4, 100
BATCH = 500
ROUNDS = 5


def _records() -> RecordBatch:
    cells, measurements = synthetic_device(DEVICE, CELLS, PER_CELL)
    measurements = [m.model_copy(update={"samples_s": [m.latency_ms_p50 / 1000 + i * 1e-6
                                                       for i in range(SAMPLES)]})
                    for m in measurements]
    return RecordBatch(cells=cells, measurements=measurements)


def _bodies(records: RecordBatch) -> list[bytes]:
    flat = [*records.cells, *records.measurements]
    return [RecordBatch(cells=[r for r in flat[i:i + BATCH] if r.kind == "cell"],
                        measurements=[r for r in flat[i:i + BATCH] if r.kind == "measurement"])
            .model_dump_json().encode() for i in range(0, len(flat), BATCH)]


def _best(work, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _upload(root: Path, local: ResultsStore, signer: Signer | None) -> float:
    app = create_app(ServerSettings.of(None, root))
    key = PublicKey(signer.public.raw) if signer else None
    token = create_token(app.state.store.engine, DEVICE, "", key)[1]
    with TestClient(app) as http:
        start = time.perf_counter()
        summary = upload_store(local, ServerClient(http, token), BATCH, quiet=True,
                               signer=signer)
        elapsed = time.perf_counter() - start
    assert summary.counts["added"] == CELLS * (1 + PER_CELL)
    app.state.store.engine.dispose()
    return elapsed


def test_signed_upload_cost(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    records = _records()
    n = len(records)
    bodies = _bodies(records)
    signer = Signer(Ed25519PrivateKey.generate(), DEVICE)
    headers = [sign_upload(signer, b) for b in bodies]
    sign = _best(lambda: [sign_upload(signer, b) for b in bodies])
    verify = _best(lambda: [verify_upload(h, b) for h, b in zip(headers, bodies, strict=True)])
    local = ResultsStore(tmp_path / "local")
    local.ingest(records)
    plain, signed = [], []
    for i in range(ROUNDS):
        plain.append(_upload(tmp_path / f"plain-{i}", local, None))
        signed.append(_upload(tmp_path / f"signed-{i}", local, signer))
    per_k = 1000 / n * 1000
    p, s = statistics.median(plain), statistics.median(signed)
    print(f"\n{n} records in {len(bodies)} bodies of {BATCH} ({sum(map(len, bodies)) / 1e6:.1f} "
          f"MB JSON): signing {sign * per_k:.2f} ms per 1,000 records, verifying "
          f"{verify * per_k:.2f} ms per 1,000 records (best of {ROUNDS})")
    print(f"whole upload into the server app (in process, SQLite), median of {ROUNDS}: unsigned "
          f"{p * per_k:.0f} ms, signed {s * per_k:.0f} ms per 1,000 records "
          f"(difference {(s - p) * per_k:+.0f} ms, {100 * (s - p) / p:+.1f}%); "
          f"runs unsigned {[round(t * per_k) for t in plain]}, signed "
          f"{[round(t * per_k) for t in signed]}")
