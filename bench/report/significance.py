"""Significance with bench.stats, per data set x backbone, in two kinds of Holm family.

Seed-level (generalise over training seeds): each configuration vs FP32, each quantised
configuration vs its float control (`Method.float_control`: fp32_fold_ft for QAT, LSQ and PACT,
the quantisation control, the same folded graph with quantisation disabled and the same
fine-tuning; sgt_ft for PACT+SGT, its equal-budget control), every pair of
configurations at the same bit-width, on accuracy and on the main saliency statistic; Wilcoxon
over seeds (too few seeds: the reason instead of a p-value); McNemar exact per seed vs FP32;
Friedman over every configuration with seeds as blocks, and the Nemenyi critical difference only
when Friedman rejects.

Per image, with the test image as the unit (generalise over test images given these trained
models, not over re-training beyond their seeds): the same comparisons, accuracy by the
clustered McNemar test (Durkalski et al. 2003) on per-image correctness, the main saliency
statistic by a sign-flip permutation test flipping all seeds of an image together; each with its
power line (smallest detectable difference with the covariance across seeds, its limit with
infinitely many seeds, the seeds the per-image test would need). Pairs are the cells of the
same seed and split manifest evaluated on the same images; an image is the same image in every
seed by its index.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Literal

import numpy as np
import pandas as pd

from bench import stats
from bench.errors import ConfigError
from bench.report.data import BLOCK, FP32, ReportData, bits_label, config_label, seed_matrix

TEST: stats.Test = "wilcoxon"
MAIN_SALIENCY = ("saliency_spearman_fp32", "saliency_topk_iou_fp32", "saliency_max_sensitivity",
                 "saliency_deletion_gain", "saliency_pointing_game")
"""The main saliency statistic: the first of these the store has values for."""
SEED_LEVEL = ("training seeds: would the difference hold for a model trained with a new seed? "
              "(the split and the test images are fixed)")
IMAGE_LEVEL = ("test images, given these trained models: would the difference hold on new "
               "images from the same distribution? (not over re-training beyond the seeds)")
ImageTest = Literal["clustered_mcnemar", "sign_flip"]
IMAGE_TESTS: dict[str, Callable[..., stats.ImageLevelResult]] = {
    "clustered_mcnemar": stats.clustered_mcnemar, "sign_flip": stats.sign_flip_test}
"""The per-image test of each kind of per-image value: correctness, continuous values."""
Kind = Literal["vs_fp32", "vs_control", "same_bits"]
"""Which comparisons a family holds: each configuration vs FP32, each quantised one vs its
float control (`Method.float_control`), or the pairs at one bit-width."""


@dataclass(frozen=True)
class Family:
    """One Holm family of paired tests over seeds, or why it has none (``note``)."""

    title: str
    metric: str
    results: list[stats.PairedResult]
    note: str | None = None
    comparison: Kind = "vs_fp32"


@dataclass(frozen=True)
class ImageFamily:
    """One Holm family of per-image tests with the image as the unit; ``skipped``:
    comparisons that could not be made, with the reason."""

    title: str
    metric: str
    test: ImageTest
    results: list[stats.ImageLevelResult]
    skipped: list[str] = field(default_factory=list)
    comparison: Kind = "vs_fp32"


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
    image_families: list[ImageFamily] = field(default_factory=list)
    mcnemar: list[McNemarRow] = field(default_factory=list)
    mcnemar_note: str | None = None
    friedman: stats.FriedmanResult | None = None
    cd: stats.CDResult | None = None
    cd_note: str | None = None


def holm_family(family: Family | ImageFamily) -> str:
    """The comparisons a family's Holm correction is over, in words: "each configuration vs
    FP32, accuracy per image" for the family "accuracy per image: each configuration vs
    FP32"; a seed-level family's say "over seeds"."""
    what, _, which = family.title.partition(": ")
    if isinstance(family, Family):
        what += " over seeds"
    return f"{which}, {what}" if which else family.title


def main_saliency(ok: pd.DataFrame) -> str | None:
    """The saliency column the significance tests use, or None when the store has none."""
    for column in MAIN_SALIENCY:
        if column in ok and ok[column].notna().any():
            return column
    return None


def float_control(method: str) -> str | None:
    """The float method a method is compared with, besides FP32: fp32_fold_ft (the
    quantisation control) for QAT, LSQ and PACT, sgt_ft (its equal-budget control) for PACT+SGT
    (`Method.float_control`; imported here only, as it pulls in the training stack)."""
    from methods import get_method

    try:
        return get_method(method).float_control
    except ConfigError:  # a method of another version of medq-bench
        return None


def control_role(method: str) -> str | None:
    """What a float control method controls for, in words (`Method.control_role`), or None."""
    from methods import get_method

    try:
        return get_method(method).control_role
    except ConfigError:  # a method of another version of medq-bench
        return None


Pair = tuple[str, str]


@dataclass(frozen=True)
class Comparisons:
    """The comparisons of one block: (A, B) label pairs per family, and float controls that
    have no cells (``missing``: A -> its control's label)."""

    vs_fp32: list[Pair]
    vs_control: list[Pair]
    missing_control: dict[str, str]
    same_bits: dict[str, list[Pair]]


def comparisons(ok: pd.DataFrame, configs: list[str]) -> Comparisons:
    """Each configuration vs FP32, each quantised one vs its float control, pairs at a bit-width."""
    rows = ok.drop_duplicates("config").set_index("config")
    vs_control, missing = [], {}
    groups: dict[str, list[str]] = {}
    for config in configs:
        if config == FP32:
            continue
        row = rows.loc[config]
        groups.setdefault(bits_label(int(row.w_bits), int(row.a_bits)), []).append(config)
        control = float_control(str(row.method))
        if control is not None and int(row.w_bits) != 32:
            label = config_label(control, 32, 32)
            if label in configs:
                vs_control.append((config, label))
            else:
                missing[config] = label
    return Comparisons([(c, FP32) for c in configs if c != FP32 and FP32 in configs],
                       vs_control, missing,
                       {b: list(itertools.combinations(cs, 2)) for b, cs in groups.items()
                        if len(cs) > 1})


def _missing_note(missing: dict[str, str]) -> str:
    by_control: dict[str, list[str]] = {}
    for config, control in missing.items():
        by_control.setdefault(control, []).append(config)
    return "; ".join(f"{control} (the float control of {', '.join(cs)}) has no "
                     "cells here: comparison skipped" for control, cs in by_control.items())


def _seed_family(title: str, metric: str, values: dict[str, list[float]], pairs: list[Pair],
                 note: str | None = None, comparison: Kind = "vs_fp32") -> Family:
    results = [stats.paired_test(values[a], values[b], TEST) for a, b in pairs]
    adjusted = stats.holm([r.p_value for r in results])
    level = stats.family_alpha(sum(r.p_value is not None for r in results))
    return Family(title, metric, [replace(stats.paired_mde_at(r, values[a], values[b], level),
                                          name_a=a, name_b=b, p_adjusted=p)
                                  for r, (a, b), p in zip(results, pairs, adjusted, strict=True)],
                  note, comparison)


def families(ok: pd.DataFrame, metric: str) -> list[Family]:
    """Seed-level families on the column ``metric``: vs FP32, vs float control, same bits."""
    _, values = seed_matrix(ok, metric)
    values = {c: v for c, v in values.items() if np.isfinite(v).any()}
    plan = comparisons(ok, list(values))
    out = []
    if FP32 in values and len(values) > 1:
        out.append(_seed_family(f"{metric}: each configuration vs FP32", metric, values,
                                plan.vs_fp32))
    elif len(values) > 1:
        out.append(Family(f"{metric}: each configuration vs FP32", metric, [],
                          f"FP32 has no {metric} values (it is the reference of this "
                          "statistic or was not run): no test"))
    if plan.vs_control or plan.missing_control:
        title = f"{metric}: each quantised configuration vs its float control"
        out.append(_seed_family(title, metric, values, plan.vs_control,
                                _missing_note(plan.missing_control) or None, "vs_control"))
    for label, pairs in plan.same_bits.items():
        out.append(_seed_family(f"{metric}: pairs at {label}", metric, values, pairs,
                                comparison="same_bits"))
    return out


def cell_predictions(data: ReportData, cell_id: str) -> dict[str, np.ndarray] | None:
    """A cell's per-image test predictions (`index`, `labels`, `predictions`), or None.

    The one place the significance tests read predictions (McNemar, clustered McNemar): the
    cell's headline
    predictions (bench.report.data.headline: the deployed model's where its deploy stage stored
    them, else the torch model's), the same model as the headline accuracy the seed-level tests
    compare.
    """
    return data.headline_predictions(cell_id)


PerImage = Callable[[str], tuple[np.ndarray, np.ndarray] | None]
"""cell id -> (image indices, per-image values), or None when the cell has none."""


def correctness(data: ReportData) -> PerImage:
    """Per-image correctness (predictions == labels) of each cell, read once."""
    @cache
    def of(cell_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        p = cell_predictions(data, cell_id)
        return None if p is None else (p["index"], (p["predictions"] == p["labels"]))
    return of


def saliency_values(data: ReportData, metric: str) -> PerImage:
    """Per-image values of `metric` (e.g. "spearman_fp32") of each cell's primary method."""
    @cache
    def of(cell_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        stage = (data.records[cell_id].metrics or {}).get("saliency") or {}
        values = ((stage.get("stats") or {}).get(stage.get("primary"), {}).get(metric) or {}
                  ).get("values")
        if not values or not stage.get("images"):
            return None
        return (np.asarray(stage["images"]),
                np.array([np.nan if v is None else v for v in values], dtype=float))
    return of


BySeed = dict[str, dict[int, tuple[str, str]]]
"""config -> seed -> (cell id, split manifest) of a block's cells, read once per block."""


def by_seed(ok: pd.DataFrame) -> BySeed:
    """Each configuration's cell per seed (``ok`` has one row per configuration and seed)."""
    out: BySeed = {}
    for config, seed, cell_id, manifest in zip(ok.config, ok.seed, ok.cell_id,
                                               ok.split_manifest, strict=True):
        out.setdefault(config, {})[seed] = (cell_id, manifest)
    return out


def _paired_by_seed(cells: BySeed, a: str, b: str, per_image: PerImage
                    ) -> tuple[list[np.ndarray], list[np.ndarray], str | None, list[np.ndarray]]:
    """Per seed, the values of A and B on the same images; why some seeds were left out; per
    seed the images' indices (an image is the same image in every seed by its index)."""
    seeds_a, seeds_b = cells.get(a, {}), cells.get(b, {})
    xs, ys, left, images = [], [], [], []
    for seed in sorted(set(seeds_a) & set(seeds_b)):
        (id_a, manifest_a), (id_b, manifest_b) = seeds_a[seed], seeds_b[seed]
        if manifest_a != manifest_b:
            left.append(f"seed {seed}: other test split")
            continue
        va, vb = per_image(id_a), per_image(id_b)
        if va is None or vb is None:
            left.append(f"seed {seed}: no per-image values")
            continue
        if not np.array_equal(va[0], vb[0]):
            left.append(f"seed {seed}: other images")
            continue
        xs.append(va[1])
        ys.append(vb[1])
        images.append(va[0])
    return xs, ys, "; ".join(left) or None, images


def _image_family(title: str, metric: str, test: ImageTest, cells: BySeed,
                  pairs: list[Pair], per_image: PerImage, skipped: list[str],
                  comparison: Kind = "vs_fp32") -> ImageFamily:
    results, skipped, data = [], list(skipped), []
    for a, b in pairs:
        xs, ys, left, images = _paired_by_seed(cells, a, b, per_image)
        if not xs:
            skipped.append(f"{a} vs {b}: {left or 'no seed in common'}")
            continue
        if left:
            skipped.append(f"{a} vs {b}: {left}")
        res = IMAGE_TESTS[test](xs, ys, images=images)
        results.append(replace(res, name_a=a, name_b=b))
        data.append((xs, ys, images))
    adjusted = stats.holm([r.p_value for r in results])
    level = stats.family_alpha(sum(r.p_value is not None for r in results))
    return ImageFamily(title, metric, test,
                       [replace(stats.image_mde_at(r, *xy, level), p_adjusted=p)
                        for r, xy, p in zip(results, data, adjusted, strict=True)],
                       skipped, comparison)


def image_families(ok: pd.DataFrame, configs: list[str], metric: str,
                   test: ImageTest, per_image: PerImage) -> list[ImageFamily]:
    """Per-image families of one statistic: vs FP32, vs float control, pairs at a bit-width."""
    cells = by_seed(ok)
    have = [c for c in configs
            if any(per_image(cid) is not None for cid, _ in cells.get(c, {}).values())]
    plan = comparisons(ok, have)
    name = "accuracy" if test == "clustered_mcnemar" else metric
    out = []
    if FP32 in have:
        out.append(_image_family(f"{name} per image: each configuration vs FP32", metric, test,
                                 cells, plan.vs_fp32, per_image, []))
    elif len(have) > 1:
        out.append(ImageFamily(f"{name} per image: each configuration vs FP32", metric, test,
                               [], [f"FP32 has no per-image {name} values (it is the reference "
                                    "of this statistic or was not run): no test"]))
    if plan.vs_control or plan.missing_control:
        note = [_missing_note(plan.missing_control)] if plan.missing_control else []
        out.append(_image_family(
            f"{name} per image: each quantised configuration vs its float control",
            metric, test, cells, plan.vs_control, per_image, note, "vs_control"))
    for label, pairs in plan.same_bits.items():
        out.append(_image_family(f"{name} per image: pairs at {label}", metric, test, cells,
                                 pairs, per_image, [], "same_bits"))
    return out


def mcnemar_vs_fp32(data: ReportData, ok: pd.DataFrame) -> tuple[list[McNemarRow], str | None]:
    """Each configuration vs the FP32 cell of the same seed and split manifest."""
    base = ok[ok.config == FP32].set_index("seed")
    if base.empty:
        return [], "no FP32 cell: no McNemar test"
    cache: dict[str, dict[str, np.ndarray] | None] = {}

    def predictions_of(cell_id: str) -> dict[str, np.ndarray] | None:
        if cell_id not in cache:
            cache[cell_id] = cell_predictions(data, cell_id)
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


def _friedman_and_cd(tests: BlockTests, matrix: dict[str, list[float]], alpha: float = 0.05
                     ) -> None:
    """Friedman over every configuration; the critical difference only when it rejects."""
    tests.friedman = stats.friedman(matrix)
    if tests.friedman.reason is not None:
        tests.cd_note = f"No critical-difference diagram: {tests.friedman.reason}."
    elif tests.friedman.p_value is not None and tests.friedman.p_value < alpha:
        tests.cd = stats.critical_difference(matrix, alpha=alpha)
    else:
        tests.cd_note = (f"No critical-difference diagram: the Friedman test does not reject "
                         f"(p = {tests.friedman.p_value:.3g} >= {alpha}), so no pair of "
                         "configurations is ranked apart.")


def block_tests(data: ReportData) -> list[BlockTests]:
    """Every test of every data set x backbone."""
    out = []
    saliency = main_saliency(data.ok)
    metric = None if saliency is None else saliency.removeprefix("saliency_")
    correct = correctness(data)
    values = None if metric is None else saliency_values(data, metric)
    for (dataset, backbone), ok in data.ok.groupby(BLOCK, sort=True):
        seeds, matrix = seed_matrix(ok, "accuracy")
        tests = BlockTests(f"{dataset} / {backbone}", dataset, backbone, seeds)
        tests.families = families(ok, "accuracy")
        if saliency is not None:
            tests.families += families(ok, saliency)
        configs = list(matrix)
        tests.image_families = image_families(ok, configs, "accuracy", "clustered_mcnemar",
                                              correct)
        if metric is not None and values is not None:
            tests.image_families += image_families(ok, configs, metric, "sign_flip", values)
        tests.mcnemar, tests.mcnemar_note = mcnemar_vs_fp32(data, ok)
        matrix = {c: v for c, v in matrix.items() if np.isfinite(v).any()}
        if matrix:
            _friedman_and_cd(tests, matrix)
        out.append(tests)
    return out
