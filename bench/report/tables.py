"""The main results table and the devices table: per data set x backbone x configuration."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench import stats
from bench.report import fmt
from bench.report.clinical import clinical_view, macro_f1_by_cell
from bench.report.data import BLOCK, CONFIG, FP32, ReportData, config_sort_key

Kind = Literal["text", "int", "ci", "float", "kib", "pct", "ms", "mb", "ratio", "points", "pval",
               "delta"]
Better = Literal["high", "low"] | None

SALIENCY_KEY = {"saliency_spearman_fp32": ("saliency ρ vs FP32", "high"),
                "saliency_null_spearman_fp32": ("null ρ (quant. off)", None),
                "saliency_topk_iou_fp32": ("saliency top-k IoU vs FP32", "high"),
                "saliency_max_sensitivity": ("saliency max-sensitivity", "low"),
                "saliency_pointing_game": ("saliency pointing game", "high"),
                "saliency_deletion_gain": ("saliency deletion gain vs random", "high")}
"""The saliency columns the main table shows when present: label and better direction (the
null control is not ranked; deletion as its gain over a random order, comparable across
models, see bench.saliency.metrics.perturbation_scores)."""
CALIBRATION_KEY = {"ece": ("ECE", "low"), "brier": ("Brier", "low"),
                   "auroc_macro": ("macro AUROC", "high"), "torch_ece": ("torch ECE", "low"),
                   "torch_brier": ("torch Brier", "low"),
                   "torch_auroc_macro": ("torch macro AUROC", "high")}
"""The probability columns (bench.store.evaluation) the main table shows when present: the
headline model's (deployed where the cell has a deploy stage) and the torch model's."""


@dataclass(frozen=True)
class Column:
    """A table column: row key, header label, how to format it, which way is better, the
    header group it sits under (a device, "deployed", "saliency") and, for "ci", "float", "ms"
    and "delta", the digits after the point (None: the kind's default)."""

    key: str
    label: str
    kind: Kind
    better: Better = None
    group: str = ""
    digits: int | None = None


@dataclass
class Block:
    """One data set x backbone: its rows in table order; ``best`` holds (row index, key)."""

    name: str
    dataset: str
    backbone: str
    rows: list[dict[str, Any]]
    best: set[tuple[int, str]] = field(default_factory=set)


@dataclass
class Table:
    """Columns shared by every block; one block per data set x backbone."""

    columns: list[Column]
    blocks: list[Block]

    @property
    def groups(self) -> list[tuple[str, int]]:
        """Header groups in column order: (label, number of columns)."""
        out: list[tuple[str, int]] = []
        for c in self.columns:
            if out and out[-1][0] == c.group:
                out[-1] = (c.group, out[-1][1] + 1)
            else:
                out.append((c.group, 1))
        return out


def text(column: Column, row: dict[str, Any]) -> str:
    """A table cell as text, identical in every output format."""
    value = row.get(column.key)
    match column.kind:
        case "ci":
            return fmt.mean_ci(value, row.get(f"{column.key}_low"), row.get(f"{column.key}_high"),
                               column.digits or 4)
        case "float":
            return fmt.num(value, 4 if column.digits is None else column.digits)
        case "kib":
            return fmt.kib(value)
        case "pct":
            return fmt.pct(value)
        case "ms":
            return fmt.num(value, 3 if column.digits is None else column.digits)
        case "points":
            return fmt.points(value, row.get(f"{column.key}_mark"))
        case "pval":
            return fmt.pval(value)
        case "delta":
            return fmt.signed(value, 3 if column.digits is None else column.digits)
        case "mb":
            return fmt.num(value, 1)
        case "ratio":
            return fmt.ratio(value)
        case "int":
            return fmt.DASH if fmt.missing(value) else str(int(value))
    return fmt.DASH if value is None or value == "" else str(value)


def _ci(values: pd.Series) -> tuple[float | None, float | None, float | None]:
    finite = values.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    return stats.mean_ci(finite) if finite.size else (None, None, None)


def _flags(values: pd.Series) -> str:
    counts = Counter(f for v in values.dropna() for f in str(v).split(",") if f)
    return ", ".join(f"{f} ({n}/{len(values)})" for f, n in sorted(counts.items()))


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(pd.to_numeric(frame[column], errors="coerce").notna().any())


def _device_means(data: ReportData) -> pd.DataFrame:
    """Mean latency p50/p90 and peak RSS over seeds per configuration and device."""
    if data.measured.empty or data.ok.empty:
        return pd.DataFrame(columns=[*CONFIG, "config", "device", "latency_ms_p50",
                                     "latency_ms_p90", "peak_rss_mb"])
    joined = data.measured.merge(data.ok[["cell_id", *CONFIG, "config"]], on="cell_id")
    keys = [*CONFIG, "config", "device"]
    means = joined.groupby(keys, as_index=False)[
        ["latency_ms_p50", "latency_ms_p90", "peak_rss_mb"]].mean()
    if "kernels" not in joined:
        return means
    kernels = joined.groupby(keys, as_index=False)["kernels"].agg(
        lambda k: " / ".join(sorted(set(k.dropna()))) or None)
    return means.merge(kernels, on=keys)


def main_columns(data: ReportData) -> list[Column]:
    """The main table's columns: deployment, device and saliency ones only when present."""
    ok = data.ok
    cols = [Column("config", "configuration", "text"), Column("seeds", "seeds", "int"),
            Column("failed", "failed", "int"),
            Column("accuracy", "accuracy (95% CI)", "ci", "high"),
            Column("macro_f1", "macro-F1", "float", "high"),
            Column("torch_macro_f1", "torch macro-F1", "float", "high")]
    if _has(ok, "deployed_accuracy"):
        cols += [Column("deployed_accuracy", "deployed acc.", "float", "high", "deployed"),
                 Column("torch_accuracy", "torch acc.", "float", "high", "deployed"),
                 Column("agreement", "agreement", "float", "high", "deployed"),
                 Column("int_coverage", "int. coverage", "float", "high", "deployed"),
                 Column("int_coverage_macs", "int. coverage (MACs)", "float", "high", "deployed"),
                 Column("size_bytes", "ONNX KiB", "kib", "low", "deployed"),
                 Column("size_pct", "% FP32", "pct", "low", "deployed"),
                 Column("packed_size_bytes", "packed KiB", "kib", "low", "deployed"),
                 Column("packed_pct", "% FP32", "pct", "low", "deployed")]
    cols += [Column(k, label, "float", better, "calibration", 3)
             for k, (label, better) in CALIBRATION_KEY.items() if _has(ok, k)]
    for device in data.devices:
        cols += [Column(f"p50@{device}", "p50 ms", "ms", "low", device),
                 Column(f"p90@{device}", "p90 ms", "ms", "low", device),
                 Column(f"rss@{device}", "peak MB", "mb", "low", device)]
    cols += [Column(k, label, "float", better, "saliency")
             for k, (label, better) in SALIENCY_KEY.items() if _has(ok, k)]
    if "deploy_flags" in data.cells and data.cells.deploy_flags.fillna("").astype(bool).any():
        cols.append(Column("flags", "flags", "text"))
    return cols


def _config_row(cells: pd.DataFrame, ok: pd.DataFrame, columns: list[Column],
                f1: dict[str, float]) -> dict[str, Any]:
    first = cells.iloc[0]
    row: dict[str, Any] = {"config": first.config, "method": first.method,
                           "w_bits": int(first.w_bits), "a_bits": int(first.a_bits),
                           "seeds": int(ok.seed.nunique()),
                           "failed": int((cells.status != "ok").sum())}
    row["accuracy"], row["accuracy_low"], row["accuracy_high"] = _ci(ok.accuracy)
    keys = {c.key for c in columns}
    headline_f1 = pd.Series([f1.get(c) for c in ok.cell_id], dtype=float)
    row["macro_f1"] = float(headline_f1.mean()) if headline_f1.notna().any() else None
    row["torch_macro_f1"] = float(ok.macro_f1.mean()) if _has(ok, "macro_f1") else None
    for key in ("deployed_accuracy", "torch_accuracy", "agreement", "int_coverage",
                "int_coverage_macs", "size_bytes", "packed_size_bytes", *CALIBRATION_KEY,
                *SALIENCY_KEY):
        if key in keys:
            row[key] = float(ok[key].mean()) if _has(ok, key) else None
    if "flags" in keys:
        row["flags"] = _flags(ok.deploy_flags)
    return row


def _add_devices(row: dict[str, Any], means: pd.DataFrame) -> None:
    for m in means.itertuples(index=False):
        row[f"p50@{m.device}"] = m.latency_ms_p50
        row[f"p90@{m.device}"] = m.latency_ms_p90
        row[f"rss@{m.device}"] = m.peak_rss_mb


def _add_fp32_percent(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["config"] == FP32), None)
    for r in rows:
        for key, pct in (("size_bytes", "size_pct"), ("packed_size_bytes", "packed_pct")):
            ref = None if base is None else base.get(key)
            value = r.get(key)
            r[pct] = (None if fmt.missing(ref) or fmt.missing(value) or not ref
                      else 100.0 * value / ref)


def mark_best(block: Block, columns: list[Column]) -> None:
    """Mark the best value of each ranked column (ties all marked; needs two values)."""
    for column in columns:
        if column.better is None:
            continue
        values = [(i, r.get(column.key)) for i, r in enumerate(block.rows)]
        values = [(i, float(v)) for i, v in values if not fmt.missing(v)]
        if len(values) < 2:
            continue
        pick = max if column.better == "high" else min
        best = pick(v for _, v in values)
        block.best |= {(i, column.key) for i, v in values if np.isclose(v, best, rtol=1e-12,
                                                                         atol=0)}


def main_table(data: ReportData, f1: dict[str, float] | None = None) -> Table:
    """Per data set x backbone x method x bits: accuracy with CI over seeds, macro-F1 of the
    headline (deployed) predictions beside the torch model's, calibration, deployment,
    latency and memory per device, key saliency figures; best value per column marked.
    ``f1``: each cell's headline macro-F1 (bench.report.clinical.macro_f1_by_cell; computed
    here when not given)."""
    if f1 is None:
        f1 = macro_f1_by_cell(clinical_view(data))
    columns = main_columns(data)
    if data.cells.empty:
        return Table(columns, [])
    means = _device_means(data)
    by_config = dict(iter(means.groupby(["dataset", "backbone", "config"])))
    empty = means.iloc[:0]
    blocks = []
    ok_by = dict(iter(data.ok.groupby(CONFIG)))
    for (dataset, backbone), cells in data.cells.groupby(BLOCK, sort=True):
        rows = []
        for key, group in sorted(cells.groupby(["method", "w_bits", "a_bits"]),
                                 key=lambda kv: config_sort_key(*kv[0])):
            mine = ok_by.get((dataset, backbone, *key), data.ok.iloc[:0])
            row = _config_row(group, mine, columns, f1)
            _add_devices(row, by_config.get((dataset, backbone, row["config"]), empty))
            rows.append(row)
        _add_fp32_percent(rows)
        block = Block(f"{dataset} / {backbone}", dataset, backbone, rows)
        mark_best(block, columns)
        blocks.append(block)
    return Table(columns, blocks)


def device_table(data: ReportData) -> Table:
    """Latency p50 per device side by side, with the speedup over FP32 on the same device."""
    columns = [Column("config", "configuration", "text")]
    for device in data.devices:
        columns += [Column(f"p50@{device}", "p50 ms", "ms", "low", device),
                    Column(f"speedup@{device}", "vs FP32", "ratio", "high", device),
                    Column(f"kernels@{device}", "kernels", "text", None, device)]
    means = _device_means(data)
    blocks = []
    for (dataset, backbone), group in means.groupby(BLOCK, sort=True):
        rows: dict[str, dict[str, Any]] = {}
        for m in sorted(group.itertuples(index=False),
                        key=lambda m: config_sort_key(m.method, m.w_bits, m.a_bits)):
            row = rows.setdefault(m.config, {"config": m.config})
            row[f"p50@{m.device}"] = m.latency_ms_p50
            row[f"kernels@{m.device}"] = getattr(m, "kernels", None)
        base = rows.get(FP32, {})
        for row in rows.values():
            for device in data.devices:
                ref, value = base.get(f"p50@{device}"), row.get(f"p50@{device}")
                if not (fmt.missing(ref) or fmt.missing(value)) and value > 0:
                    row[f"speedup@{device}"] = ref / value
        block = Block(f"{dataset} / {backbone}", dataset, backbone, list(rows.values()))
        mark_best(block, columns)
        blocks.append(block)
    return Table(columns, blocks)


def comparison_table(data: ReportData) -> Table | None:
    """bench.compare's per-configuration comparison of the measured devices (None with fewer
    than two): p50, p99 and peak memory on each device, over FP32 on the same device, and each
    device's ratio to the first; means over seeds, ratios geometric means."""
    compared = data.compared
    if compared is None:
        return None
    base = compared.base
    columns = [Column("config", "configuration", "text"), Column("seeds", "seeds", "int")]
    for device in compared.devices:
        columns += [Column(f"p50_ms@{device}", "p50 ms", "ms", "low", device),
                    Column(f"p99_ms@{device}", "p99 ms", "ms", "low", device),
                    Column(f"peak_mb@{device}", "peak MB", "mb", "low", device),
                    Column(f"p50_vs_fp32@{device}", "p50 / FP32", "ratio", "low", device),
                    Column(f"mem_vs_fp32@{device}", "MB / FP32", "ratio", "low", device)]
        if device != base:
            columns += [Column(f"p50_ratio@{device}", f"p50 / {base}", "ratio", None, device),
                        Column(f"p99_ratio@{device}", f"p99 / {base}", "ratio", None, device),
                        Column(f"mem_ratio@{device}", f"MB / {base}", "ratio", None, device)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in compared.rows:
        groups.setdefault((row["dataset"], row["backbone"]), []).append(row)
    blocks = []
    for (dataset, backbone), rows in sorted(groups.items()):
        ordered = sorted(rows, key=lambda r: config_sort_key(r["method"], r["w_bits"],
                                                             r["a_bits"]))
        block = Block(f"{dataset} / {backbone}", dataset, backbone, ordered)
        mark_best(block, columns)
        blocks.append(block)
    return Table(columns, blocks)
