"""Hand-built cell and measurement records (no training) for upload, compare and benchmarks."""

from __future__ import annotations

from datetime import datetime, timedelta

from bench.store.bounds import latency_summary
from bench.store.records import CellData, MeasurementData

T0 = datetime(2026, 3, 1, 12, 0, 0)


def cell(cell_id: str, method: str = "fp32", w_bits: int = 32, a_bits: int = 32, seed: int = 0,
         parent_id: str | None = None, device: str = "gpu-server", dataset: str = "synthetic",
         backbone: str = "smallcnn", status: str = "ok", minute: int = 0) -> CellData:
    return CellData(
        cell_id=cell_id, parent_id=parent_id, device=device, grid="hand", dataset=dataset,
        backbone=backbone, method=method, w_bits=w_bits, a_bits=a_bits, seed=seed,
        status=status, error=None if status == "ok" else "RuntimeError: boom",
        accuracy=0.8 if status == "ok" else None, macro_f1=0.75 if status == "ok" else None,
        train_seconds=12.5, split_manifest=f"manifest-{dataset}",
        metrics={"deploy": {"onnx_file": "model.onnx"}}, config={"method": method},
        provenance={"git": {"commit": "abc123"}}, started_at=T0 + timedelta(minutes=minute),
        finished_at=T0 + timedelta(minutes=minute, seconds=30))


def measurement(cell_id: str, device: str, p50: float | None, p99: float | None = None,
                mem: float | None = None, profile: str = "host", minute: int = 0,
                status: str = "ok", batch_size: int = 1, machine: str = "m0",
                samples: int = 0) -> MeasurementData:
    """A measurement with these figures; with ``samples``, its summary is that of its samples
    (around ``p50``), as `bench measure` stores it."""
    ok = status == "ok"
    samples_s = [(p50 or 1.0) / 1000 + i * 1e-6 for i in range(samples)]
    summary = latency_summary(samples_s) if ok and samples else {}
    return MeasurementData(
        cell_id=cell_id, device=device, profile=profile, machine=machine, batch_size=batch_size,
        status=status, error=None if ok else "MemoryError: limit", isolation="process",
        samples_s=samples_s, **{
            "latency_ms_mean": p50, "latency_ms_std": 0.1 if ok else None,
            "latency_cv": 0.01 if ok else None, "latency_ms_min": p50,
            "latency_ms_p50": p50 if ok else None, "latency_ms_p90": p99 if ok else None,
            "latency_ms_p99": p99 if ok else None, **summary},
        load_time_s=0.01, peak_rss_mb=mem if ok else None, size_bytes=1000,
        packed_size_bytes=500, fingerprint={"cpu_model": f"CPU of {device}", "hash": machine},
        profile_config={"name": profile}, details={},
        started_at=T0 + timedelta(hours=1, minutes=minute),
        finished_at=T0 + timedelta(hours=1, minutes=minute, seconds=10))


def synthetic_device(device: str, n_cells: int, per_cell: int) -> tuple[list[CellData],
                                                                        list[MeasurementData]]:
    """``n_cells`` cells of ``device`` with ``per_cell`` measurements each (distinct batch
    sizes), with latency samples: a realistic upload."""
    cells, measurements = [], []
    for i in range(n_cells):
        cells.append(cell(f"{device[:8]}c{i:05d}", device=device, seed=i, minute=i))
        for b in range(per_cell):
            measurements.append(measurement(cells[-1].cell_id, device, 1.0 + i % 7, 2.0, 50.0,
                                            batch_size=b + 1, minute=i, samples=50))
    return cells, measurements
