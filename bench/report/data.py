"""What the report reads from a results store: cells, their stage columns, and measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.compare import Comparison, by_config, compare, device_labels
from bench.config import FP32_BITS
from bench.report.answers import Answer, device_answers
from bench.store import RESULT_COLUMNS, CellRecord, ResultsStore
from bench.store.database import stage_columns
from bench.store.deploy import DEPLOY_COLUMNS, DEPLOY_TEXT_COLUMNS
from bench.store.evaluation import PROBABILITY_COLUMNS, TORCH_PROBABILITY_COLUMNS
from bench.store.measurements import MeasurementRecord
from bench.store.origins import replacement_count, signatures_by_device
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData
from methods.base import FP32

BLOCK = ["dataset", "backbone"]
CONFIG = ["dataset", "backbone", "method", "w_bits", "a_bits"]
METHOD_ORDER = (FP32, "fp32_ft", "fp32_fold_ft", "sgt", "sgt_ft", "ptq", "qat", "lsq", "pact",
                "pact_sgt")
DEVICE_KEY = ["device_name", "profile", "batch_size"]
"""What the report keys a measurement by: the record's device, profile and batch size (two
identical boards share a machine fingerprint; a device is its own)."""
NUMERIC = frozenset({"accuracy", "torch_accuracy", "macro_f1", "train_seconds",
                     *(c for c in DEPLOY_COLUMNS if c not in DEPLOY_TEXT_COLUMNS),
                     *PROBABILITY_COLUMNS, *TORCH_PROBABILITY_COLUMNS})
TORCH_PREDICTIONS = "predictions.npz"
PREDICTION_KEYS = ("index", "labels", "predictions")


@dataclass(frozen=True)
class Headline:
    """The figures the report leads with for one cell, and where they come from."""

    source: Literal["deployed", "torch"]
    accuracy: float | None
    predictions_file: str


def headline(record: CellRecord) -> Headline:
    """A cell's headline: the deployed (ONNX Runtime) model's accuracy and per-sample test
    predictions when its deploy stage stored them (a device runs that model), else the torch
    model's (for quantised cells, fake quantisation). The report's accuracy, its intervals and
    every test on accuracy or predictions use this; the record's own ``accuracy`` is the report
    frame's ``torch_accuracy``."""
    deploy = (record.metrics or {}).get("deploy")
    if isinstance(deploy, dict) and deploy.get("deployed_predictions"):
        columns = deploy.get("columns") or {}
        return Headline("deployed", columns.get("deployed_accuracy"),
                        deploy["deployed_predictions"])
    return Headline("torch", record.accuracy, TORCH_PREDICTIONS)
_MEASURED = ("cell_id", "device", "profile", "machine", "batch_size", "status", "error",
             "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "peak_rss_mb", "samples_s",
             "fingerprint", "details", "finished_at")


def kernels_label(details: dict[str, Any] | None) -> str | None:
    """The ONNX Runtime kernel policy a measurement timed (`bench.deploy.runtime`), with `*` where
    its kernels are not the exact ones the deployed accuracy was evaluated with."""
    details = details or {}
    policy = details.get("kernel_policy")
    if policy is None:
        return None
    return policy if details.get("exact_kernels", True) else f"{policy}*"


def config_label(method: str, w_bits: int, a_bits: int) -> str:
    """`fp32`, `sgt`, `ptq W4A4`: a configuration's name within a data set and backbone."""
    if w_bits == FP32_BITS and a_bits == FP32_BITS:
        return method
    return f"{method} W{w_bits}A{a_bits}"


def bits_label(w_bits: int, a_bits: int) -> str:
    return "float" if w_bits == FP32_BITS and a_bits == FP32_BITS else f"W{w_bits}A{a_bits}"


def config_sort_key(method: str, w_bits: int, a_bits: int) -> tuple[Any, ...]:
    """FP32 first, then float methods, then quantised by falling bits, methods in a fixed order."""
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (-w_bits, -a_bits, rank, method)


@dataclass(frozen=True)
class ReportData:
    """Everything read from the store, once.

    ``cells``: one row per record (result and stage columns, and the `config` label),
    ``ok``: the successful cells, one per configuration and seed (the latest one),
    ``measured``: the latest successful measurement per cell and (device, profile, batch size),
    with `device_name` (the record's device) and `device` (its label, bench.compare's
    ``device_labels``),
    ``failed_measurements``: measurements whose latest attempt failed,
    ``compared``: with measurements from 2+ devices (their `device` names), bench.compare's
    comparison of them per configuration (None otherwise),
    ``signatures``: per device, how its records reached the store and who signed them,
    ``replacements``: how many stored records were replaced (the store's audit table).
    """

    root: Path
    records: dict[str, CellRecord]
    cells: pd.DataFrame
    ok: pd.DataFrame
    superseded: int
    measured: pd.DataFrame
    failed_measurements: pd.DataFrame
    devices: list[str]
    compared: Comparison | None = None
    signatures: list[str] = field(default_factory=list)
    replacements: int = 0
    answers: list[Answer] = field(default_factory=list)
    """Accuracy-mode results per cell and device (bench.report.answers)."""
    _predictions: dict[str, dict[str, np.ndarray] | None] = field(
        default_factory=dict, repr=False, compare=False)

    def artifact_dir(self, cell_id: str) -> Path | None:
        folder = self.records[cell_id].artifacts
        return None if not folder else self.root / folder

    def headline_predictions(self, cell_id: str) -> dict[str, np.ndarray] | None:
        """The per-sample test predictions of the cell's ``headline`` (index, labels,
        predictions), or None when the file is not in the store; read once per cell (every
        test and the per-class view share them)."""
        if cell_id not in self._predictions:
            self._predictions[cell_id] = self._read_predictions(cell_id)
        return self._predictions[cell_id]

    def _read_predictions(self, cell_id: str) -> dict[str, np.ndarray] | None:
        folder = self.artifact_dir(cell_id)
        path = None if folder is None else folder / headline(self.records[cell_id]).predictions_file
        if path is None or not path.is_file():
            return None
        with np.load(path) as f:
            return {k: f[k] for k in PREDICTION_KEYS}


def _cell_row(record: CellRecord) -> dict[str, Any]:
    """Result and stage columns; ``accuracy`` is the headline's, ``torch_accuracy`` the
    record's own and ``accuracy_source`` says which model the headline is."""
    row = {**{c: getattr(record, c) for c in RESULT_COLUMNS}, **stage_columns(record)}
    lead = headline(record)
    row.update(accuracy=lead.accuracy, torch_accuracy=record.accuracy,
               accuracy_source=lead.source)
    return row


def _cell_rows(records: list[CellRecord]) -> pd.DataFrame:
    rows = [_cell_row(r) for r in records]
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*RESULT_COLUMNS,
                                                           *(k for r in rows for k in r)])))
    if frame.empty:
        return frame.assign(config=pd.Series(dtype=str))
    for column in frame.columns:
        if column in NUMERIC or column.startswith("saliency_"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["config"] = [config_label(m, w, a) for m, w, a in
                       zip(frame.method, frame.w_bits, frame.a_bits, strict=True)]
    return frame


def _latest_ok(cells: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One successful cell per configuration and seed (the most recent); how many were dropped."""
    ok = cells[cells.status == "ok"]
    latest = ok.sort_values("finished_at").drop_duplicates([*CONFIG, "seed"], keep="last")
    return latest.sort_values([*CONFIG, "seed"]).reset_index(drop=True), len(ok) - len(latest)


def _measurements(store: ResultsStore) -> pd.DataFrame:
    columns = [getattr(MeasurementRecord, c) for c in _MEASURED]
    query = select(*columns).order_by(MeasurementRecord.finished_at, MeasurementRecord.id)
    with Session(store.engine) as session:
        rows = [dict(zip(_MEASURED, values, strict=True)) for values in session.execute(query)]
    frame = pd.DataFrame(rows, columns=list(_MEASURED)).rename(columns={"device": "device_name"})
    frame["cpu"] = [(f or {}).get("cpu_model") for f in frame.fingerprint]
    frame["kernels"] = [kernels_label(d) for d in frame.details]
    # An emulated device's latency is the emulator's: the report shows only its answers.
    emulated = pd.Series([bool((d or {}).get("emulated")) for d in frame.details],
                         index=frame.index, dtype=bool)
    return frame[~emulated].drop(columns=["fingerprint", "details"])


def _split_measurements(frame: pd.DataFrame, cell_ids: set[str]
                        ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    frame = frame[frame.cell_id.isin(cell_ids)]
    latest = frame.drop_duplicates(["cell_id", *DEVICE_KEY], keep="last")
    ok = frame[frame.status == "ok"].drop_duplicates(["cell_id", *DEVICE_KEY], keep="last")
    failed = latest[latest.status != "ok"].reset_index(drop=True)
    keys = [(d, p, int(b)) for d, p, b in zip(ok.device_name, ok.profile, ok.batch_size,
                                              strict=True)]
    labels = device_labels(keys)
    ok = ok.assign(device=[labels[k] for k in keys])
    return ok.reset_index(drop=True), failed, sorted(set(labels.values()))


def load(store: ResultsStore, test_images: bool = True) -> ReportData:
    """Read the store once: records, flat cell rows and measurements (``test_images=False``:
    no thumbnail of a test image)."""
    records = store.records()
    cells = _cell_rows(records)
    ok, superseded = _latest_ok(cells) if len(cells) else (cells, 0)
    measured, failed, devices = _split_measurements(_measurements(store), set(cells.get(
        "cell_id", [])))
    return ReportData(store.root, {r.cell_id: r for r in records}, cells, ok, superseded,
                      measured, failed, devices, _compared(store, set(ok.get("cell_id", []))),
                      [d.text() for d in signatures_by_device(store.engine)],
                      replacement_count(store.engine),
                      device_answers(store, set(ok.get("cell_id", [])), test_images))


def _compared(store: ResultsStore, ok_ids: set[str]) -> Comparison | None:
    """bench.compare over every device with a successful measurement, if there are 2+, per
    configuration of the cells the report counts (``ok_ids``); emulated measurements are left
    out (their latency is the emulator's)."""
    chosen = RecordFilter(status=["ok"])
    with Session(store.engine) as session:
        if len(set(session.scalars(select(MeasurementRecord.device).distinct().where(
                MeasurementRecord.status == "ok")))) < 2:
            return None
        measurements = [m for m in (MeasurementData.of(row) for row in session.scalars(
            chosen.measurements())) if not (m.details or {}).get("emulated")]
        devices = sorted({m.device for m in measurements})
        if len(devices) < 2:
            return None
        cells = [CellData.of(row) for row in session.scalars(chosen.cells())]
    return by_config(compare(cells, measurements, devices,
                             selection=RecordFilter(cell_ids=sorted(ok_ids))))


def seed_matrix(frame: pd.DataFrame, column: str) -> tuple[list[int], dict[str, list[float]]]:
    """Seeds (sorted) and, per configuration label in table order, its value at each seed
    (NaN where the seed or the value is missing). ``frame`` has one row per config and seed."""
    seeds = sorted(int(s) for s in frame.seed.unique())
    position = {s: i for i, s in enumerate(seeds)}
    values = {label: [math.nan] * len(seeds) for label in ordered_configs(frame)}
    for config, seed, value in zip(frame.config, frame.seed, frame[column], strict=True):
        if value is not None and not pd.isna(value):
            values[config][position[int(seed)]] = float(value)
    return seeds, values


def ordered_configs(frame: pd.DataFrame) -> list[str]:
    """Configuration labels of ``frame`` in table order."""
    keys = frame[["method", "w_bits", "a_bits", "config"]].drop_duplicates("config")
    ordered = sorted(keys.itertuples(index=False),
                     key=lambda k: config_sort_key(k.method, int(k.w_bits), int(k.a_bits)))
    return [k.config for k in ordered]
