"""The results server on loopback (SQLite): ingest rate of `bench upload`, and latency of
`GET /api/v1/records` under concurrent readers.

Runs only with `make bench` (MEDQ_BENCH=1), or:

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_server.py -o addopts="" -s

Upload: 10,000 measurement records (2,500 cells x 4 batch sizes, 100 latency samples each) and
their 2,500 cells, sent by `bench upload` (a subprocess, default batch size 500) to `bench
serve` (another subprocess); printed: records/s as the upload reports it (first request to last
answer) and the command's wall time. Reads: 4 concurrent clients, each its own connection,
each MEDQ_BENCH_READS (200) pages of 100 measurements at varying offsets; printed: p50/p99/max
latency and requests/s. First one client reads each distinct page once, cold (the server keeps
the items it has written); then the 4 clients as threads of this process, as issue 16
measured them, reading the default pages (every measurement with its 100 samples); then as 4
processes, the default pages and with `samples=false` (threads share this process's GIL, and
their JSON parsing, about 10 ms a page on a 2-core machine, counts in the other threads'
latency; processes do not). Target (issue 16): p99 of the default pages read by the 4 threads
<= 50 ms, asserted (a loaded machine can miss it; judge it on a quiet one). Clients and server
share the cores.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
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
P99_TARGET_S = 0.050


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


def _reader(url: str, worker: int, total: int, extra: dict[str, str], start_at: float
            ) -> tuple[list[float], float]:
    """One client's READS pages from wall-clock time ``start_at``: latencies, and when done."""
    with httpx.Client(base_url=url, timeout=60) as client:
        time.sleep(max(start_at - time.time(), 0.0))
        latencies = []
        for i in range(READS):
            offset = _offset(worker, i, total)
            start = time.perf_counter()
            response = client.get("/api/v1/records", params={
                "kind": "measurement", "device": DEVICE, "limit": PAGE, "offset": offset,
                **extra})
            latencies.append(time.perf_counter() - start)
            items = response.json()["items"]
            assert response.status_code == 200 and len(items) == PAGE
            assert len(items[0].get("samples_s", ())) == (0 if extra else SAMPLES)
    return latencies, time.time()


@dataclass(frozen=True)
class Reads:
    p50: float
    p99: float
    max: float
    rate: float

    def __str__(self) -> str:
        return (f"p50 {self.p50 * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, max "
                f"{self.max * 1000:.1f} ms, {self.rate:.1f} requests/s")


def _offset(worker: int, i: int, total: int) -> int:
    return ((worker * READS + i) * 37 * PAGE) % max(total - PAGE, 1)


def _cold_reads(url: str, total: int) -> Reads:
    """One client reading each page the readers will read, once, in turn."""
    offsets = sorted({_offset(w, i, total) for w in range(READERS) for i in range(READS)})
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        for offset in offsets:
            began = time.perf_counter()
            response = client.get("/api/v1/records", params={
                "kind": "measurement", "device": DEVICE, "limit": PAGE, "offset": offset})
            latencies.append(time.perf_counter() - began)
            assert response.status_code == 200
        elapsed = time.perf_counter() - start
    latencies.sort()
    p50, p99 = (statistics.quantiles(latencies, n=100, method="inclusive")[q] for q in (49, 98))
    return Reads(p50, p99, latencies[-1], len(latencies) / elapsed)


def _concurrent_reads(url: str, total: int, extra: dict[str, str], processes: bool) -> Reads:
    """READERS clients reading READS pages each at once, as processes or as threads."""
    pool = (ProcessPoolExecutor(READERS, mp_context=multiprocessing.get_context("spawn"))
            if processes else ThreadPoolExecutor(READERS))
    with pool:
        if processes:   # started before the clock: a spawned process imports for a while
            list(pool.map(time.sleep, [0.0] * READERS))
        start_at = time.time() + 0.5
        results = list(pool.map(_reader, [url] * READERS, range(READERS), [total] * READERS,
                                [extra] * READERS, [start_at] * READERS))
    latencies = sorted(t for ts, _ in results for t in ts)
    assert len(latencies) == READERS * READS
    elapsed = max(end for _, end in results) - start_at
    p50, p99 = (statistics.quantiles(latencies, n=100, method="inclusive")[q] for q in (49, 98))
    return Reads(p50, p99, latencies[-1], len(latencies) / elapsed)


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

        total = CELLS * PER_CELL
        cold = _cold_reads(live.url, total)
        threads = _concurrent_reads(live.url, total, {}, processes=False)
        full = _concurrent_reads(live.url, total, {}, processes=True)
        lean = _concurrent_reads(live.url, total, {"samples": "false"}, processes=True)
    finally:
        live.kill()
    print(f"\nupload: {records} records ({CELLS * PER_CELL} measurements + {CELLS} cells) "
          f"at {rate:.0f} records/s as bench upload reports it; command wall time {wall:.1f} s "
          f"(rate over wall time {records / wall:.0f} records/s); rerun sending nothing "
          f"{rerun:.1f} s")
    print(f"GET /api/v1/records (kind=measurement, limit={PAGE}, {SAMPLES} samples each), "
          f"{READERS} concurrent client threads x {READS}: {threads}")
    print(f"  {READERS} client processes: {full}; with samples=false: {lean}")
    print(f"  one client reading each of those pages once, cold: {cold}")
    assert threads.p99 <= P99_TARGET_S, f"p99 {threads.p99 * 1000:.1f} ms > target 50 ms"
