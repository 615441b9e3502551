"""Significance over seeds with bench.stats: paired families (Holm), McNemar, Friedman + CD.

Per data set x backbone: each configuration vs FP32, and every pair of configurations at the
same bit-width, on accuracy and on the main saliency statistic; McNemar exact on per-sample test
predictions of a configuration and FP32 with the same seed and split manifest (Holm over the
block); Friedman and the Nemenyi critical difference over every configuration, seeds as blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import stats
from bench.report.data import BLOCK, FP32, ReportData, bits_label, seed_matrix

PREDICTIONS = "predictions.npz"
TEST: stats.Test = "wilcoxon"
MAIN_SALIENCY = ("saliency_spearman_fp32", "saliency_topk_iou_fp32", "saliency_max_sensitivity",
                 "saliency_deletion_auc", "saliency_pointing_game")
"""The main saliency statistic: the first of these the store has values for."""


@dataclass(frozen=True)
class Family:
    """One Holm family of paired tests, or why it has none (``note``)."""

    title: str
    metric: str
    results: list[stats.PairedResult]
    note: str | None = None


@dataclass(frozen=True)
class McNemarRow:
    config: str
    seed: int
    result: stats.McNemarResult
    p_adjusted: float | None


@dataclass
class BlockTests:
    name: str
    dataset: str
    backbone: str
    seeds: list[int]
    families: list[Family] = field(default_factory=list)
    mcnemar: list[McNemarRow] = field(default_factory=list)
    mcnemar_note: str | None = None
    friedman: stats.FriedmanResult | None = None
    cd: stats.CDResult | None = None


def main_saliency(ok: pd.DataFrame) -> str | None:
    """The saliency column the significance tests use, or None when the store has none."""
    for column in MAIN_SALIENCY:
        if column in ok and ok[column].notna().any():
            return column
    return None


def families(ok: pd.DataFrame, metric: str) -> list[Family]:
    """Each configuration vs FP32, and each pair at the same bits, on the column ``metric``."""
    _, values = seed_matrix(ok, metric)
    values = {c: v for c, v in values.items() if np.isfinite(v).any()}
    out = []
    if FP32 in values and len(values) > 1:
        out.append(Family(f"{metric}: each configuration vs FP32", metric,
                          stats.compare_family(values, baseline=FP32, test=TEST)))
    elif len(values) > 1:
        out.append(Family(f"{metric}: each configuration vs FP32", metric, [],
                          f"FP32 has no {metric} values (it is the reference of this "
                          "statistic or was not run): no test"))
    bits = ok.drop_duplicates("config").set_index("config")
    groups: dict[str, list[str]] = {}
    for config in values:
        if config != FP32:
            row = bits.loc[config]
            groups.setdefault(bits_label(int(row.w_bits), int(row.a_bits)), []).append(config)
    for label, configs in groups.items():
        if len(configs) > 1:
            out.append(Family(f"{metric}: pairs at {label}", metric, stats.compare_family(
                {c: values[c] for c in configs}, baseline=None, test=TEST)))
    return out


def _predictions(folder: Path | None) -> dict[str, np.ndarray] | None:
    path = None if folder is None else folder / PREDICTIONS
    if path is None or not path.is_file():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in ("index", "labels", "predictions")}


def mcnemar_vs_fp32(data: ReportData, ok: pd.DataFrame) -> tuple[list[McNemarRow], str | None]:
    """Each configuration vs the FP32 cell of the same seed and split manifest."""
    base = ok[ok.config == FP32].set_index("seed")
    if base.empty:
        return [], "no FP32 cell: no McNemar test"
    cache: dict[str, dict[str, np.ndarray] | None] = {}

    def predictions_of(cell_id: str) -> dict[str, np.ndarray] | None:
        if cell_id not in cache:
            cache[cell_id] = data.headline_predictions(cell_id)
        return cache[cell_id]

    pairs, missing, mismatched = [], 0, 0
    for cell in ok[ok.config != FP32].itertuples(index=False):
        if cell.seed not in base.index:
            continue
        fp32 = base.loc[cell.seed]
        if fp32.split_manifest != cell.split_manifest:
            mismatched += 1
            continue
        a, b = predictions_of(cell.cell_id), predictions_of(fp32.cell_id)
        if a is None or b is None:
            missing += 1
            continue
        if not np.array_equal(a["index"], b["index"]):
            mismatched += 1
            continue
        pairs.append((cell.config, int(cell.seed),
                      stats.mcnemar_exact(a["predictions"], b["predictions"], a["labels"])))
    adjusted = stats.holm([r.p_value for _, _, r in pairs])
    rows = [McNemarRow(c, s, r, p) for (c, s, r), p in zip(pairs, adjusted, strict=True)]
    notes = [f"{missing} pairs without stored predictions"] if missing else []
    notes += [f"{mismatched} pairs on different test splits"] if mismatched else []
    if not rows and not notes:
        notes.append("no configuration shares a seed with FP32")
    return rows, "; ".join(notes) or None


def block_tests(data: ReportData) -> list[BlockTests]:
    """Every test of every data set x backbone."""
    out = []
    saliency = main_saliency(data.ok)
    for (dataset, backbone), ok in data.ok.groupby(BLOCK, sort=True):
        seeds, matrix = seed_matrix(ok, "accuracy")
        tests = BlockTests(f"{dataset} / {backbone}", dataset, backbone, seeds)
        tests.families = families(ok, "accuracy")
        if saliency is not None:
            tests.families += families(ok, saliency)
        tests.mcnemar, tests.mcnemar_note = mcnemar_vs_fp32(data, ok)
        matrix = {c: v for c, v in matrix.items() if np.isfinite(v).any()}
        if matrix:
            tests.friedman = stats.friedman(matrix)
            tests.cd = stats.critical_difference(matrix)
        out.append(tests)
    return out
