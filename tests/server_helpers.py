"""Helpers for the results server's tests: tiny records, tokens, and a real server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.store.records import CellData, MeasurementData, RecordBatch
from tests.postgres import free_port

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cell(cell_id: str, device: str = "dev-a", method: str = "fp32", bits: int = 32,
         dataset: str = "synthetic", status: str = "ok", minutes: int = 0,
         **changes: Any) -> CellData:
    """A small valid cell record (no artifacts)."""
    when = T0 + timedelta(minutes=minutes)
    return CellData(cell_id=cell_id, device=device, grid="tiny", dataset=dataset,
                    backbone="smallcnn", method=method, w_bits=bits, a_bits=bits, seed=0,
                    status=status, accuracy=0.5 + bits / 100, macro_f1=0.4, train_seconds=1.0,
                    split_manifest="m" * 8, config={"lr": 0.003}, provenance={"os": "linux"},
                    started_at=when, finished_at=when, **changes)


def measurement(cell_id: str, device: str = "dev-a", profile: str = "host",
                machine: str = "m1", latency: float = 2.0, minutes: int = 0) -> MeasurementData:
    """A small valid measurement record."""
    when = T0 + timedelta(minutes=minutes)
    return MeasurementData(cell_id=cell_id, device=device, profile=profile, machine=machine,
                           batch_size=1, status="ok", isolation="process",
                           samples_s=[latency / 1000] * 3, latency_ms_mean=latency,
                           latency_ms_p50=latency, latency_ms_p90=latency,
                           latency_ms_p99=latency, peak_rss_mb=50.0,
                           fingerprint={"cpu": "x"}, profile_config={"warmup": 1},
                           started_at=when, finished_at=when)


def batch(cells: Sequence[CellData] = (), measurements: Sequence[MeasurementData] = ()
          ) -> RecordBatch:
    return RecordBatch(cells=list(cells), measurements=list(measurements))


def body(records: RecordBatch) -> dict[str, Any]:
    """The JSON upload body of ``records``."""
    return records.model_dump(mode="json")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class LiveServer:
    """`bench serve` in a subprocess on 127.0.0.1 at a free port."""

    data: Path
    db_url: str | None = None
    extra: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveServer:
        command = [sys.executable, "-m", "bench.cli", "serve", "--data", str(self.data),
                   "--port", str(self.port), *self.extra]
        if self.db_url:
            command += ["--db", self.db_url]
        log = (self.data.parent / f"{self.data.name}-server.log").open("ab")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"bench serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("bench serve did not answer /healthz in time")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
