"""Compare devices: per cell, latency and memory on each device, their ratios between devices,
each cell's latency and memory relative to its FP32 reference on the same device and, where the
device ran accuracy mode, its answers: accuracy, agreement with the deploying machine's
predictions and the largest logit difference (bench.store.accuracy).

`compare` is a pure function of cell and measurement records, so a store, a results server and
the HTML report all compare the same way. Each device contributes one profile and batch size
(the one asked for, else its most common) and, per cell, its latest successful measurement
under them. A cell's FP32 reference is its parent when that is an FP32 cell, else the FP32
cell of the same data set, backbone, seed and split (methods trained from scratch); an FP32
cell is its own reference, so its ratios are 1.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.errors import UsageError
from bench.store.accuracy import accuracy_columns
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData
from methods.base import FP32

METRICS = {"p50_ms": "latency_ms_p50", "p99_ms": "latency_ms_p99", "peak_mb": "peak_rss_mb"}
"""Compared quantities: column prefix -> measurement field."""
ANSWERS = {"accuracy": "device_accuracy", "agreement": "device_agreement",
           "max_logit_diff": "device_max_logit_diff"}
"""Accuracy-mode quantities: column prefix -> measurement details field."""
VS_FP32 = {"p50_vs_fp32": "p50_ms", "mem_vs_fp32": "peak_mb"}
BETWEEN = {"p50_ratio": "p50_ms", "p99_ratio": "p99_ms", "mem_ratio": "peak_mb"}
CELL_COLUMNS = ("cell_id", "dataset", "backbone", "method", "w_bits", "a_bits", "seed",
                "config", "fp32_id")


@dataclass(frozen=True)
class Choice:
    """The profile and batch size a device is compared under, and how it was chosen."""

    profile: str
    batch_size: int
    chosen_by: str
    cells: int


@dataclass(frozen=True)
class Comparison:
    """Rows (one per cell, or per configuration) with `<metric>@<device>` columns."""

    devices: list[str]
    choices: dict[str, Choice | None]
    rows: list[dict[str, Any]]

    @property
    def base(self) -> str:
        return self.devices[0]

    def columns(self) -> list[str]:
        first = [c for c in CELL_COLUMNS if any(c in r for r in self.rows)] or list(CELL_COLUMNS)
        return [*first,
                *(f"{m}@{d}" for d in self.devices for m in METRICS),
                *(f"{a}@{d}" for d in self.devices for a in ANSWERS),
                *(f"emulated@{d}" for d in self.devices),
                *(f"{r}@{d}" for d in self.devices[1:] for r in BETWEEN),
                *(f"{r}@{d}" for d in self.devices for r in VS_FP32)]

    def describe(self) -> list[str]:
        """One line per device: what it is compared under."""
        lines = []
        for device in self.devices:
            c = self.choices.get(device)
            lines.append(f"{device}: no successful measurement" if c is None else
                         f"{device}: profile {c.profile}, batch size {c.batch_size} "
                         f"({c.chosen_by}; {c.cells} cells)")
        return lines


def device_labels(keys: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], str]:
    """One label per (device, profile, batch size) measured: the device's name, with the profile
    where the device was measured under several and the batch size where it has several under
    that profile, e.g. `pi-a`, `pi-a (edge-1core)`, `pi-a (edge-1core, b8)`. Device names hold
    no spaces or brackets, so labels never collide. The report keys every table and plot by
    these; `compare` uses one profile and batch size per device, so its label is the name."""
    unique = sorted(set(keys))
    profiles: dict[str, set[str]] = {}
    batches: dict[tuple[str, str], set[int]] = {}
    for device, profile, batch in unique:
        profiles.setdefault(device, set()).add(profile)
        batches.setdefault((device, profile), set()).add(batch)
    labels = {}
    for device, profile, batch in unique:
        parts = [profile] if len(profiles[device]) > 1 else []
        if len(batches[(device, profile)]) > 1:
            parts.append(f"b{batch}")
        labels[(device, profile, batch)] = f"{device} ({', '.join(parts)})" if parts else device
    return labels


def config_label(method: str, w_bits: int, a_bits: int) -> str:
    return method if w_bits == 32 and a_bits == 32 else f"{method} W{w_bits}A{a_bits}"


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or not reference > 0:
        return None
    return value / reference


def _choose(device: str, measured: list[MeasurementData], profile: str | None
            ) -> Choice | None:
    if not measured:
        if profile is not None:
            raise UsageError(f"device {device} has no successful measurement")
        return None
    profiles = Counter(m.profile for m in measured)
    if profile is not None and profile not in profiles:
        raise UsageError(f"device {device} has no successful measurement under profile "
                         f"'{profile}'; its profiles: {', '.join(sorted(profiles))}")
    how = "asked for" if profile is not None else "its most common profile"
    profile = profile or min(profiles, key=lambda p: (-profiles[p], p))
    batches = Counter(m.batch_size for m in measured if m.profile == profile)
    batch = min(batches, key=lambda b: (-batches[b], b))
    cells = {m.cell_id for m in measured if m.profile == profile and m.batch_size == batch}
    return Choice(profile, batch, how, len(cells))


def _latest(measured: Iterable[MeasurementData], choice: Choice) -> dict[str, MeasurementData]:
    """The latest measurement per cell under ``choice``."""
    latest: dict[str, MeasurementData] = {}
    for m in measured:
        if m.profile != choice.profile or m.batch_size != choice.batch_size:
            continue
        held = latest.get(m.cell_id)
        if held is None or m.finished_at >= held.finished_at:
            latest[m.cell_id] = m
    return latest


def _fp32_references(cells: dict[str, CellData]) -> dict[str, str]:
    """Each cell's FP32 reference cell id (where one is among ``cells``)."""
    by_key = {}
    for cell in sorted(cells.values(), key=lambda c: c.finished_at):
        if cell.method == FP32:
            by_key[(cell.dataset, cell.backbone, cell.seed, cell.split_manifest)] = cell.cell_id
    references = {}
    for cell in cells.values():
        parent = cells.get(cell.parent_id or "")
        if cell.method == FP32:
            references[cell.cell_id] = cell.cell_id
        elif parent is not None and parent.method == FP32:
            references[cell.cell_id] = parent.cell_id
        elif (key := (cell.dataset, cell.backbone, cell.seed, cell.split_manifest)) in by_key:
            references[cell.cell_id] = by_key[key]
    return references


def compare(cells: Iterable[CellData], measurements: Iterable[MeasurementData],
            devices: Sequence[str], profile: str | None = None,
            selection: RecordFilter | None = None) -> Comparison:
    """One row per successful cell in ``selection`` measured on any of ``devices``: its p50,
    p99 and peak memory on each device, each device's ratio to the first, and on each device
    its p50 and memory over its FP32 reference's."""
    if not devices:
        raise UsageError("name at least one device")
    ok_cells = {c.cell_id: c for c in cells if c.status == "ok"}
    ok = [m for m in measurements if m.status == "ok" and m.cell_id in ok_cells]
    choices = {d: _choose(d, [m for m in ok if m.device == d], profile) for d in devices}
    latest = {d: _latest((m for m in ok if m.device == d), c) if c else {}
              for d, c in choices.items()}
    references = _fp32_references(ok_cells)
    rows = []
    for cell in sorted(ok_cells.values(), key=_order):
        if selection is not None and not selection.matches(cell):
            continue
        if not any(cell.cell_id in latest[d] for d in devices):
            continue
        reference = references.get(cell.cell_id)
        row: dict[str, Any] = {c: getattr(cell, c) for c in CELL_COLUMNS[:7]}
        row["config"] = config_label(cell.method, cell.w_bits, cell.a_bits)
        row["fp32_id"] = reference
        for device in devices:
            mine, ref = latest[device].get(cell.cell_id), latest[device].get(reference or "")
            for key, field_name in METRICS.items():
                row[f"{key}@{device}"] = getattr(mine, field_name) if mine else None
            answers = accuracy_columns(mine.details if mine else None)
            for key, field_name in ANSWERS.items():
                row[f"{key}@{device}"] = answers[field_name]
            row[f"emulated@{device}"] = bool(mine.details.get("emulated")) if mine else None
            for key, metric in VS_FP32.items():
                row[f"{key}@{device}"] = ratio(row[f"{metric}@{device}"],
                                               getattr(ref, METRICS[metric]) if ref else None)
        for device in devices[1:]:
            for key, metric in BETWEEN.items():
                row[f"{key}@{device}"] = ratio(row[f"{metric}@{device}"],
                                               row[f"{metric}@{devices[0]}"])
        rows.append(row)
    return Comparison(list(devices), choices, rows)


def _order(cell: CellData) -> tuple[Any, ...]:
    return (cell.dataset, cell.backbone, cell.method != FP32, -cell.w_bits, -cell.a_bits,
            cell.method, cell.seed, cell.cell_id)


def by_config(comparison: Comparison) -> Comparison:
    """One row per data set, backbone and configuration: values are means over its cells
    (seeds), ratios geometric means of the cells' ratios; `seeds` counts the cells."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in comparison.rows:
        groups.setdefault((row["dataset"], row["backbone"], row["method"], row["w_bits"],
                           row["a_bits"]), []).append(row)
    ratios = {*BETWEEN, *VS_FP32}
    rows = []
    for (dataset, backbone, method, w_bits, a_bits), members in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "backbone": backbone, "method": method,
                               "w_bits": w_bits, "a_bits": a_bits,
                               "config": config_label(method, w_bits, a_bits),
                               "seeds": len(members)}
        for column in comparison.columns():
            if "@" in column:
                values = [r[column] for r in members if r.get(column) is not None]
                prefix = column.split("@")[0]
                if prefix == "emulated":
                    row[column] = any(values) if values else None
                    continue
                row[column] = _geomean(values) if prefix in ratios else (
                    sum(values) / len(values) if values else None)
        rows.append(row)
    return Comparison(comparison.devices, comparison.choices, rows)


def _geomean(values: list[float]) -> float | None:
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    return math.exp(sum(math.log(v) for v in positive) / len(positive))


def to_json(comparison: Comparison) -> str:
    return json.dumps({"devices": comparison.devices,
                       "profiles": {d: asdict(c) if c else None
                                    for d, c in comparison.choices.items()},
                       "rows": comparison.rows}, indent=1)


def to_csv(comparison: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=comparison.columns(), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparison.rows)
    return buffer.getvalue()


def check_devices(devices: Sequence[str], present: Iterable[str]) -> None:
    """UsageError naming the devices present if any of ``devices`` is not among them."""
    known = sorted(set(present))
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise UsageError(f"unknown device{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; devices present: {', '.join(known) or 'none'}")
    if len(set(devices)) != len(devices):
        raise UsageError(f"a device is named twice: {', '.join(devices)}")


def _text(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        prefix = column.split("@")[0]
        digits = 3 if prefix.endswith("_ms") or prefix in ANSWERS else \
            1 if prefix == "peak_mb" else 2
        return f"{value:.{digits}f}"
    return str(value)


LABELS = {"p50_ms": "p50 ms", "p99_ms": "p99 ms", "peak_mb": "peak MB", "p50_ratio": "p50",
          "p99_ratio": "p99", "mem_ratio": "peak MB", "p50_vs_fp32": "p50/FP32",
          "mem_vs_fp32": "MB/FP32", "accuracy": "accuracy", "agreement": "agreement",
          "max_logit_diff": "max |dlogit|", "emulated": "emulated"}


def header(column: str, base: str) -> str:
    """Two lines: `p50_ms@pi` -> `pi`, `p50 ms`; `p50_ratio@pi` -> `pi/laptop`, `p50`."""
    prefix, _, device = column.partition("@")
    if not device:
        return column
    top = f"{device}/{base}" if prefix in BETWEEN else device
    return f"{top}\n{LABELS[prefix]}"


def _shown(comparison: Comparison, column: str) -> bool:
    """Whether the terminal table shows ``column``: accuracy-mode columns only where a device
    ran accuracy mode, `emulated` only where a device is emulated."""
    prefix = column.split("@")[0]
    values = [r.get(column) for r in comparison.rows]
    if prefix == "emulated":
        return any(values)
    return prefix not in ANSWERS or any(v is not None for v in values)


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells for a terminal table (the cell id shortened)."""
    columns = [c for c in comparison.columns()
               if c not in ("method", "w_bits", "a_bits", "fp32_id") and _shown(comparison, c)]
    rows = [[_text(c, r.get(c))[:12] if c == "cell_id" else _text(c, r.get(c)) for c in columns]
            for r in comparison.rows]
    return [header(c, comparison.base) for c in columns], rows
