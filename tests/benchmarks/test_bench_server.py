"""The results server on loopback (SQLite): ingest rate of `bench upload`, and latency of
`GET /api/v1/records` under concurrent readers.

Runs only with `make bench` (MEDQ_BENCH=1), or:

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_server.py -o addopts="" -s

Upload: 10,000 measurement records (2,500 cells x 4 batch sizes, 100 latency samples each) and
their 2,500 cells, sent by `bench upload` (a subprocess, default batch size 500) to `bench
serve` (another subprocess); printed: records/s as the upload reports it (first request to last
answer) and the command's wall time. Reads: 4 threads, each its own connection, each
MEDQ_BENCH_READS (200) pages of 100 measurements at varying offsets; printed: p50/p99/max
latency and requests/s. Both processes share the machine's cores; no target is asserted.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.store import ResultsStore
from bench.store.records import RecordBatch
from tests.exchange_records import synthetic_device
from tests.server_helpers import ROOT, LiveServer

DEVICE = "bench-pi"
CELLS, PER_CELL, SAMPLES = 2500, 4, 100
READERS = 4
READS = int(os.environ.get("MEDQ_BENCH_READS", "200"))
PAGE = 100


def _store(root: Path) -> int:
    cells, measurements = synthetic_device(DEVICE, CELLS, PER_CELL)
    measurements = [m.model_copy(update={"samples_s": [m.latency_ms_p50 / 1000 + i * 1e-6
                                                       for i in range(SAMPLES)]})
                    for m in measurements]
    ResultsStore(root).ingest(RecordBatch(cells=cells, measurements=measurements))
    return len(cells) + len(measurements)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=1800, check=False)


def _reader(url: str, worker: int, total: int, latencies: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(READS):
            offset = ((worker * READS + i) * 37 * PAGE) % max(total - PAGE, 1)
            start = time.perf_counter()
            response = client.get("/api/v1/records", params={
                "kind": "measurement", "device": DEVICE, "limit": PAGE, "offset": offset})
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200 and len(response.json()["items"]) == PAGE


def test_upload_rate_and_read_latency(tmp_path: Path) -> None:
    records = _store(tmp_path / "local")
    data = tmp_path / "server"
    token = _bench("serve", "token", "create", "--device", DEVICE, "--data", str(data))
    assert token.returncode == 0, token.stderr
    live = LiveServer(data).start()
    try:
        start = time.perf_counter()
        upload = _bench("upload", "--to", live.url, "--token", token.stdout.strip(),
                        "--store", str(tmp_path / "local"), "--quiet")
        wall = time.perf_counter() - start
        assert upload.returncode == 0, upload.stderr
        rate = float(re.search(r"([0-9.]+) records/s", upload.stdout)[1])
        assert f"{records} sent" in upload.stdout, upload.stdout
        start = time.perf_counter()
        again = _bench("upload", "--to", live.url, "--token", token.stdout.strip(),
                       "--store", str(tmp_path / "local"), "--quiet")
        rerun = time.perf_counter() - start
        assert f"{records} already on the server, 0 sent" in again.stdout, again.stdout
        counts = httpx.get(f"{live.url}/api/v1/devices").json()["items"]
        assert [(d["cells"], d["measurements"]) for d in counts if d["name"] == DEVICE] == [
            (CELLS, CELLS * PER_CELL)]

        per_thread: list[list[float]] = [[] for _ in range(READERS)]
        threads = [threading.Thread(target=_reader, args=(live.url, w, CELLS * PER_CELL,
                                                          per_thread[w]))
                   for w in range(READERS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    finally:
        live.kill()
    latencies = sorted(t for ts in per_thread for t in ts)
    assert len(latencies) == READERS * READS
    p50, p99 = (statistics.quantiles(latencies, n=100, method="inclusive")[q] for q in (49, 98))
    print(f"\nupload: {records} records ({CELLS * PER_CELL} measurements + {CELLS} cells) "
          f"at {rate:.0f} records/s as bench upload reports it; command wall time {wall:.1f} s "
          f"(rate over wall time {records / wall:.0f} records/s); rerun sending nothing "
          f"{rerun:.1f} s")
    print(f"GET /api/v1/records (kind=measurement, limit={PAGE}), {READERS} concurrent "
          f"clients x {READS}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
          f"{latencies[-1] * 1000:.1f} ms, {len(latencies) / elapsed:.1f} requests/s")
