"""Saliency section: stability statistics over seeds with their null control beside them, each
configuration's own sanity-check verdict per saliency method (failing rows greyed with the reason),
per-sample distributions, overlay gallery."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.report.data import BLOCK, ReportData, ordered_configs
from bench.report.tables import Block, Column, Table, mark_best

STAGE = "saliency"
METRIC_LABELS = {"spearman_fp32": ("ρ vs FP32", "high"),
                 "null_spearman_fp32": ("null ρ", None),
                 "ssim_fp32": ("SSIM vs FP32", "high"),
                 "null_ssim_fp32": ("null SSIM", None),
                 "topk_iou_fp32": ("top-k IoU vs FP32", "high"),
                 "null_topk_iou_fp32": ("null top-k IoU", None),
                 "max_sensitivity": ("max-sensitivity", "low"),
                 "pointing_game": ("pointing game", "high"),
                 "energy_pointing": ("energy pointing", "high"),
                 "topk_iou_mask": ("top-k IoU mask", "high"),
                 "deletion_gain": ("deletion gain vs random", "high"),
                 "deletion_auc_norm": ("deletion AUC / p(x)", "low"),
                 "insertion_gain": ("insertion gain vs random", "high"),
                 "insertion_auc_norm": ("insertion AUC / p(x)", "high"),
                 "deletion_auc": ("deletion AUC (raw)", None),
                 "insertion_auc": ("insertion AUC (raw)", None)}
"""Label and better direction of each statistic, in column order. The null control (quantisation
disabled, bench.saliency.null) sits right after the statistic it controls and is not ranked; raw
deletion/insertion AUCs depend on the model's confidence and are not ranked across models."""
NULL = "null_"
GALLERY_PER_CONFIG = 2
GALLERY_MAX = 48
OVERLAY_MAX_BYTES = 24_000
"""An overlay PNG larger than this is downscaled (by 3/4 steps, at least 96 px wide) and stored
as a 128-colour palette PNG, so that 48 overlays stay under ~1.5 MB of the report."""
_MIN_WIDTH = 96


@dataclass(frozen=True)
class Overlay:
    block: str
    config: str
    seed: int
    name: str
    data_uri: str


def _stage(data: ReportData, cell_id: str) -> dict[str, Any]:
    value = (data.records[cell_id].metrics or {}).get(STAGE)
    return value if isinstance(value, dict) else {}


def _stats(stage: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(saliency method, metric, describe()) of a cell's statistics and of its null control
    (metric prefixed `null_`)."""
    for prefix, source in (("", stage.get("stats")), (NULL, (stage.get("null") or {}).get(
            "stats"))):
        for method, metrics in (source or {}).items():
            for metric, d in metrics.items():
                yield method, prefix + metric, d


def cell_stats(data: ReportData) -> pd.DataFrame:
    """One row per successful cell, saliency method and metric (the null control's as
    `null_<metric>`): the cell's mean and its per-sample values."""
    rows = []
    for cell in data.ok.itertuples(index=False):
        for method, metric, d in _stats(_stage(data, cell.cell_id)):
            if isinstance(d, dict) and d.get("mean") is not None:
                rows.append((cell.dataset, cell.backbone, cell.config, cell.method,
                             int(cell.w_bits), int(cell.a_bits), int(cell.seed), method,
                             metric, float(d["mean"]), d.get("values") or []))
    return pd.DataFrame(rows, columns=[*BLOCK, "config", "method", "w_bits", "a_bits", "seed",
                                       "saliency_method", "metric", "mean", "values"])


@dataclass(frozen=True)
class Sanity:
    """The sanity check of one saliency method over one configuration's own cells (its seeds);
    ``skipped``: why it did not run on some of them (stores from before the check ran on every
    cell say "run on FP32 cells only")."""

    passed: int
    failed: int
    undetermined: int
    reasons: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    @property
    def fails(self) -> bool:
        return self.failed > 0

    def text(self) -> str:
        seeds = self.passed + self.failed + self.undetermined + len(self.skipped)
        if self.fails:
            return f"fails on {self.failed}/{seeds} seeds: {self.reasons[0]}"
        if self.passed:
            return f"passed on {self.passed}/{seeds} seeds"
        if self.undetermined:
            return f"undetermined: {self.reasons[0] if self.reasons else 'no verdict'}"
        return f"not run on this configuration ({self.skipped[0]})"


def subset_notes(data: ReportData) -> list[str]:
    """What the cells computed on a subset of their evaluated images (the records' `subsets`),
    one sentence per distinct statement, e.g. "max-sensitivity of smoothgrad on 8 of 64
    images"."""
    notes: list[str] = []
    for cell in data.ok.itertuples(index=False):
        stage = _stage(data, cell.cell_id)
        subsets = stage.get("subsets") or {}
        partial: dict[tuple[int, int], list[str]] = {}
        for method, part in (subsets.get("max_sensitivity") or {}).items():
            if part["n"] < part["of"]:
                partial.setdefault((part["n"], part["of"]), []).append(method)
        for (n, of), methods in partial.items():
            note = f"max-sensitivity of {', '.join(methods)} on {n} of {of} images"
            if note not in notes:
                notes.append(note)
        sanity = subsets.get("sanity")
        if sanity and "methods" in (stage.get("sanity") or {}):
            note = f"the sanity check on {sanity['n']} of {sanity['of']} images"
            if note not in notes:
                notes.append(note)
    return notes


SanityKey = tuple[str, str, str, str]
"""(data set, backbone, configuration label, saliency method)."""


def sanity_checks(data: ReportData) -> dict[SanityKey, Sanity]:
    """Each configuration's own verdicts, over its seeds, per saliency method: a quantised
    configuration's come from its fake-quant cells' check, never from FP32's. A cell whose check
    was skipped counts as not run, for the saliency methods its stage ran."""
    verdicts: dict[SanityKey, list[tuple[bool | None, str | None]]] = {}
    skipped: dict[SanityKey, list[str]] = {}
    for cell in data.ok.itertuples(index=False):
        stage = _stage(data, cell.cell_id)
        sanity = stage.get("sanity") or {}
        for method, result in (sanity.get("methods") or {}).items():
            verdicts.setdefault((cell.dataset, cell.backbone, cell.config, method), []).append(
                (result.get("passed"), result.get("reason")))
        if "skipped" in sanity:
            for method in stage.get("methods") or list(stage.get("stats") or {}):
                skipped.setdefault((cell.dataset, cell.backbone, cell.config, method), []
                                   ).append(str(sanity["skipped"]))
    out = {}
    for key in verdicts.keys() | skipped.keys():
        v = verdicts.get(key, [])
        out[key] = Sanity(sum(p is True for p, _ in v), sum(p is False for p, _ in v),
                          sum(p is None for p, _ in v), tuple(r for p, r in v if r and not p),
                          tuple(skipped.get(key, ())))
    return out


def stability_table(frame: pd.DataFrame, sanity: dict[SanityKey, Sanity] | None = None
                    ) -> Table:
    """Mean and 95% CI over seeds of each metric, per configuration and saliency method; the
    null control beside the statistic it controls; a row whose configuration's own sanity check
    fails for that saliency method is greyed (`muted`) with the reason."""
    sanity = sanity or {}
    metrics = [m for m in METRIC_LABELS if m in set(frame.metric)]
    columns = [Column("config", "configuration", "text"),
               Column("saliency_method", "method", "text"), Column("seeds", "seeds", "int")]
    columns += [Column(m, METRIC_LABELS[m][0], "ci", METRIC_LABELS[m][1]) for m in metrics]
    if sanity:
        columns.append(Column("sanity", "sanity check", "text"))
    blocks = []
    for (dataset, backbone), block in frame.groupby(BLOCK, sort=True):
        rows = []
        for config in ordered_configs(block):
            mine = block[block.config == config]
            for method, group in mine.groupby("saliency_method", sort=False):
                row: dict[str, Any] = {"config": config, "saliency_method": method,
                                       "seeds": int(group.seed.nunique())}
                for metric, values in group.groupby("metric")["mean"]:
                    mean, low, high = stats.mean_ci(values.to_numpy(dtype=float))
                    row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean, low, high
                check = sanity.get((dataset, backbone, config, method))
                if check is not None:
                    row["sanity"] = check.text()
                    if check.fails:
                        row["muted"] = check.text()
                rows.append(row)
        table_block = Block(f"{dataset} / {backbone}", dataset, backbone, rows)
        for method in {r["saliency_method"] for r in rows}:
            where = [i for i, r in enumerate(rows) if r["saliency_method"] == method]
            part = Block("", dataset, backbone, [rows[i] for i in where])
            mark_best(part, columns)
            table_block.best |= {(where[i], key) for i, key in part.best}
        blocks.append(table_block)
    return Table(columns, blocks)


def samples(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-sample values of ``metric``, pooled over seeds: one row per value."""
    keys = [*BLOCK, "config", "method", "w_bits", "a_bits", "saliency_method"]
    part = frame[frame.metric == metric]
    if part.empty:
        return pd.DataFrame(columns=[*keys, "value"])
    counts = part["values"].map(len).to_numpy()
    values = np.array([v for vs in part["values"] for v in vs], dtype=float)
    out = part[keys].loc[part.index.repeat(counts)]
    return out.assign(value=values).dropna(subset=["value"]).reset_index(drop=True)


def gallery(data: ReportData) -> list[Overlay]:
    """Overlay PNGs (inline data URIs): the lowest seed's images of each configuration."""
    out: list[Overlay] = []
    for (dataset, backbone), ok in data.ok.groupby(BLOCK, sort=True):
        for config in ordered_configs(ok):
            for cell in ok[ok.config == config].sort_values("seed").itertuples(index=False):
                folder = data.artifact_dir(cell.cell_id)
                pngs = sorted(folder.rglob("*.png")) if folder and folder.is_dir() else []
                for png in pngs[:GALLERY_PER_CONFIG]:
                    if len(out) >= GALLERY_MAX:
                        return out
                    uri = "data:image/png;base64," + base64.b64encode(small_png(png)).decode()
                    out.append(Overlay(f"{dataset} / {backbone}", config, int(cell.seed),
                                       png.stem, uri))
                if pngs:
                    break
    return out


def small_png(path: Path, max_bytes: int = OVERLAY_MAX_BYTES) -> bytes:
    """The PNG's bytes, downscaled until they fit ``max_bytes`` (or the image is _MIN_WIDTH
    wide): a larger overlay is re-encoded as a palette PNG at 3/4 of the size, repeatedly."""
    raw = path.read_bytes()
    if len(raw) <= max_bytes:
        return raw
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as opened:
        image = opened.convert("RGB")
    best = raw
    while True:
        buffer = io.BytesIO()
        image.quantize(128).save(buffer, format="PNG", optimize=True)
        if buffer.tell() < len(best):
            best = buffer.getvalue()
        if len(best) <= max_bytes or image.width * 3 // 4 < _MIN_WIDTH:
            return best
        image = image.resize((image.width * 3 // 4, max(1, image.height * 3 // 4)),
                             Image.Resampling.LANCZOS)
