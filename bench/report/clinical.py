"""The clinical view: per-class recall (sensitivity) and specificity of every configuration with
their 95% intervals over seeds, the change against FP32 per class, the classes whose recall
drops, and the confusion matrices of one selected configuration beside FP32's.

Every figure comes from a cell's headline predictions (bench.report.data.headline: ONNX
Runtime's where the deploy stage stored them, else the PyTorch model's), the same predictions as
the headline accuracy and its tests; a cell without a predictions file falls back to the
confusion matrix its record stores when that is the same (PyTorch) model.

A class is flagged when its recall drops by more than ``margin`` percentage points against FP32
(mean over the seeds both have) or drops significantly: the clustered McNemar test on
that class's test images with the image as the unit over seeds (bench.stats.clustered_mcnemar),
Holm-corrected over every configuration and class of the data set and backbone. A quantised
configuration is also compared, the same way, with its float controls where the block has them
(``controls_of``: the method's float control, `Method.float_control`, and, for QAT, LSQ and PACT,
both fp32_fold_ft, the quantisation control (the same folded graph, quantisation disabled, the
same fine-tuning), and fp32_ft, the training-budget (equal-budget) control; PACT+SGT's is sgt_ft,
its equal-budget control), so a drop that fine-tuning or folding alone causes is
told apart from one that quantisation causes; those tests are one more Holm family: every
quantised configuration, float control and class of the data set and backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.config import FP32_BITS
from bench.errors import ConfigError
from bench.report import fmt
from bench.report.data import BLOCK, FP32, ReportData, ordered_configs
from bench.report.significance import cell_predictions, float_control

MARGIN_POINTS = 2.0
"""Default margin: a class whose recall falls by more than this many points is flagged."""
ALPHA = stats.ALPHA
FOLDED_CONTROL = "fp32_fold_ft"
"""The float control on the quantised methods' folded graph (quantisation disabled)."""


def controls_of(method: str, w_bits: int, configs: set[str]) -> list[str]:
    """The float controls a configuration's per-class recall is compared with besides FP32: for
    a quantised one, its method's float control (none for PTQ, which does not fine-tune); for
    the methods controlled by fp32_ft or fp32_fold_ft (QAT, LSQ, PACT), both: fp32_ft, the
    training-budget (equal-budget) control, and fp32_fold_ft, the quantisation control; those
    that ``configs`` (the block's configurations) holds."""
    declared = float_control(method) if w_bits != FP32_BITS else None
    if declared is None:
        return []
    folded_graph = ("fp32_ft", FOLDED_CONTROL)
    wanted = [declared, *(folded_graph if declared in folded_graph else ())]
    return [c for c in dict.fromkeys(wanted) if c in configs]


def confusion_from(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows the true class and columns the predicted one (sklearn's convention)."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=int), np.asarray(predictions, dtype=int)), 1)
    return matrix


def recall_specificity(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: recall TP / (TP + FN) and specificity TN / (TN + FP); NaN without images."""
    m = np.asarray(matrix, dtype=float)
    tp = np.diag(m)
    positives = m.sum(axis=1)
    fp = m.sum(axis=0) - tp
    negatives = m.sum() - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(positives > 0, tp / positives, np.nan),
                np.where(negatives > 0, (negatives - fp) / negatives, np.nan))


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean over every class of F1 = 2TP / (2TP + FP + FN), 0 for a class without
    predictions or images (sklearn's f1_score(average="macro", zero_division=0))."""
    m = np.asarray(matrix, dtype=float)
    tp = np.diag(m)
    denominator = m.sum(axis=0) + m.sum(axis=1)
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.where(denominator > 0,
                                                                      denominator, 1), 0.0)))


def class_names(data: ReportData, cell_ids: list[str]) -> list[str]:
    """The class names a block's records store (`classes`), else `class 0`, `class 1`, ...
    for as many classes as its confusion matrices or predictions have (read once per cell,
    bench.report.data.ReportData.headline_predictions)."""
    n = 0
    for cid in cell_ids:
        metrics = data.records[cid].metrics or {}
        if metrics.get("classes"):
            return [str(c) for c in metrics["classes"]]
        n = max(n, len(metrics.get("confusion_matrix") or []))
    if not n:
        for cid in cell_ids:
            p = cell_predictions(data, cid)
            if p is not None and p["labels"].size:
                n = max(n, int(max(p["labels"].max(), p["predictions"].max())) + 1)
    return [f"class {i}" for i in range(n)]


Predictions = dict[str, dict[str, np.ndarray]]
"""cell id -> its headline predictions (index, labels, predictions)."""


def block_confusions(data: ReportData, ok: pd.DataFrame, n_classes: int
                     ) -> tuple[dict[str, np.ndarray], Predictions]:
    """Each cell's headline confusion matrix: from its headline predictions, else the record's
    stored matrix when the headline is the PyTorch model the record evaluated; cells with
    neither (or another number of classes) left out. Also the predictions, read once."""
    out, predictions = {}, {}
    for cell in ok.itertuples(index=False):
        p = cell_predictions(data, cell.cell_id)
        if p is not None:
            predictions[cell.cell_id] = p
            out[cell.cell_id] = confusion_from(p["labels"], p["predictions"], n_classes)
            continue
        stored = (data.records[cell.cell_id].metrics or {}).get("confusion_matrix")
        if stored and cell.accuracy_source == "torch":
            matrix = np.asarray(stored, dtype=np.int64)
            if matrix.shape == (n_classes, n_classes):
                out[cell.cell_id] = matrix
    return out, predictions


Seeds = dict[int, tuple[str, str]]
"""seed -> (cell id, split manifest) of one configuration."""


ClassPairs = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]
"""Per seed: A's correctness, B's correctness and the ids of one class's test images."""


def class_pairs(a: Seeds, b: Seeds, predictions: Predictions, n_classes: int
                ) -> tuple[list[ClassPairs], str | None]:
    """Per class, the per-seed correctness of A and of B on that class's test images and those
    images' ids, for the seeds where both are cells of the same split evaluated on the same
    images (the pairing of bench.report.significance._paired_by_seed); why some seeds were
    left out."""
    per_class: list[ClassPairs] = [([], [], []) for _ in range(n_classes)]
    left = []
    for seed in sorted(a.keys() & b.keys()):
        (ca, split_a), (cb, split_b) = a[seed], b[seed]
        pa, pb = predictions.get(ca), predictions.get(cb)
        if split_a != split_b:
            left.append(f"seed {seed}: other test split")
        elif pa is None or pb is None:
            left.append(f"seed {seed}: no per-image predictions")
        elif not np.array_equal(pa["index"], pb["index"]):
            left.append(f"seed {seed}: other images")
        else:
            right_a, right_b = pa["predictions"] == pa["labels"], pb["predictions"] == pa["labels"]
            for c in range(n_classes):
                mine = pa["labels"] == c
                per_class[c][0].append(right_a[mine])
                per_class[c][1].append(right_b[mine])
                per_class[c][2].append(np.asarray(pa["index"])[mine])
    return per_class, "; ".join(left) or None


@dataclass
class ControlChange:
    """A configuration x class against one float control: the change of recall in points (mean
    over the seeds both have), the per-class clustered McNemar test, Holm-adjusted p and the
    flag."""

    control: str
    delta_recall: float | None = None
    test: stats.ImageLevelResult | None = None
    test_note: str | None = None
    p_adjusted: float | None = None
    flag: str | None = None


@dataclass
class ClassRow:
    """One configuration x class: recall and specificity over seeds, their change against FP32
    in points (mean over the seeds both have), the per-class test and the flag."""

    config: str
    method: str
    w_bits: int
    a_bits: int
    class_index: int
    class_name: str
    seeds: int
    recall: tuple[float | None, float | None, float | None]
    specificity: tuple[float | None, float | None, float | None]
    delta_recall: float | None = None
    delta_specificity: float | None = None
    test: stats.ImageLevelResult | None = None
    test_note: str | None = None
    p_adjusted: float | None = None
    flag: str | None = None
    vs_controls: list[ControlChange] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        """Its flag against FP32 and against each float control, in words."""
        return ([self.flag] if self.flag else []) + [f"against {c.control}: {c.flag}"
                                                     for c in self.vs_controls if c.flag]

    @property
    def bits(self) -> str:
        return "float" if self.w_bits == FP32_BITS else f"W{self.w_bits}A{self.a_bits}"


@dataclass
class Selected:
    """The configuration whose confusion matrices are shown, why, and its matrices summed over
    seeds beside FP32's (None where the store has none)."""

    config: str | None
    rule: str
    matrix: np.ndarray | None = None
    fp32: np.ndarray | None = None
    seeds: int = 0
    fp32_seeds: int = 0


@dataclass
class ClinicalBlock:
    name: str
    dataset: str
    backbone: str
    classes: list[str]
    margin: float
    rows: list[ClassRow] = field(default_factory=list)
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    selected: Selected | None = None
    note: str | None = None

    @property
    def flagged(self) -> list[ClassRow]:
        """Rows flagged against FP32 or against a float control."""
        return [r for r in self.rows if r.flags]

    def heatmap_frame(self) -> pd.DataFrame:
        """Change of recall against FP32 in points, one row per quantised or float-control
        configuration and class, in table order (input of clinical_plots.per_class_heatmap)."""
        rows = [(r.config, r.class_name, r.delta_recall, bool(r.flag)) for r in self.rows
                if r.config != FP32]
        frame = pd.DataFrame(rows, columns=["config", "class", "delta_recall", "flagged"])
        frame["config"] = pd.Categorical(frame.config, list(dict.fromkeys(frame.config)))
        frame["class"] = pd.Categorical(frame["class"], self.classes)
        return frame


def _ci(values: list[float]) -> tuple[float | None, float | None, float | None]:
    finite = [v for v in values if np.isfinite(v)]
    return stats.mean_ci(finite) if finite else (None, None, None)


def _paired_delta(mine: dict[int, float], base: dict[int, float]) -> float | None:
    """Mean over the seeds both have of (mine - base), in points."""
    both = [100.0 * (mine[s] - base[s]) for s in mine.keys() & base.keys()
            if np.isfinite(mine[s]) and np.isfinite(base[s])]
    return float(np.mean(both)) if both else None


def _flag(row: ClassRow | ControlChange, margin: float) -> str | None:
    drop = row.delta_recall is not None and row.delta_recall < -margin
    significant = (row.p_adjusted is not None and row.p_adjusted < ALPHA
                   and row.delta_recall is not None and row.delta_recall < 0)
    reasons = []
    if drop:
        reasons.append(f"recall {fmt.points(row.delta_recall)} points, more than the "
                       f"{margin:g}-point margin")
    if significant:
        reasons.append(f"significant drop (clustered McNemar p = {fmt.pval(row.p_adjusted)}, Holm)")
    return "; ".join(reasons) or None


def _against(control: str, c: int, recall: dict[int, float],
             control_seeds: dict[int, tuple[np.ndarray, np.ndarray]],
             paired: tuple[list[ClassPairs], str | None]
             ) -> ControlChange:
    """Class ``c``'s recall (per seed) against a float control's: change and clustered McNemar
    test."""
    pairs, left = paired
    change = ControlChange(control, _paired_delta(recall, {s: float(r[c]) for s, (r, _)
                                                           in control_seeds.items()}))
    change.test, change.test_note = _class_test(pairs[c], left)
    return change


def _class_test(pair: ClassPairs, left: str | None) -> tuple[Any, str | None]:
    """The clustered McNemar test of one class's per-image correctness (paired by image id),
    and its note; no test where there are no per-image predictions."""
    xs, ys, ids = pair
    if not any(x.size for x in xs):
        return None, left or "no per-image predictions"
    test = stats.clustered_mcnemar(xs, ys, images=ids, power=False)
    return test, test.reason or left


def _holm(items: list[ClassRow] | list[ControlChange]) -> None:
    """Holm-adjust the p-values of the tested ``items``: one family."""
    tested = [r for r in items if r.test is not None]
    for r, p in zip(tested, stats.holm([r.test.p_value for r in tested]), strict=True):
        r.p_adjusted = p


def _block(data: ReportData, ok: pd.DataFrame, dataset: str, backbone: str, margin: float
           ) -> ClinicalBlock:
    name = f"{dataset} / {backbone}"
    classes = class_names(data, list(ok.cell_id))
    block = ClinicalBlock(name, dataset, backbone, classes, margin)
    if not classes:
        block.note = "no per-image predictions or confusion matrices in the store"
        return block
    block.matrices, predictions = block_confusions(data, ok, len(classes))
    per_seed: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for cell in ok.itertuples(index=False):
        if cell.cell_id in block.matrices:
            per_seed.setdefault(cell.config, {})[int(cell.seed)] = recall_specificity(
                block.matrices[cell.cell_id])
    keys = ok.drop_duplicates("config").set_index("config")
    seeds_of: dict[str, Seeds] = {}
    for cell in ok.itertuples(index=False):
        seeds_of.setdefault(cell.config, {})[int(cell.seed)] = (cell.cell_id,
                                                                cell.split_manifest)
    base = per_seed.get(FP32, {})
    present = set(per_seed)
    for config in ordered_configs(ok):
        seeds = per_seed.get(config, {})
        if not seeds:
            continue
        key = keys.loc[config]
        pairs, left = (class_pairs(seeds_of[config], seeds_of[FP32], predictions, len(classes))
                       if config != FP32 and base else ([], None))
        controls = {control: class_pairs(seeds_of[config], seeds_of[control], predictions,
                                         len(classes))
                    for control in controls_of(str(key.method), int(key.w_bits), present)}
        for c, cname in enumerate(classes):
            recall = {s: float(r[c]) for s, (r, _) in seeds.items()}
            spec = {s: float(sp[c]) for s, (_, sp) in seeds.items()}
            row = ClassRow(config, str(key.method), int(key.w_bits), int(key.a_bits), c, cname,
                           len(seeds), _ci(list(recall.values())), _ci(list(spec.values())))
            if config != FP32 and base:
                row.delta_recall = _paired_delta(recall, {s: float(r[c]) for s, (r, _)
                                                          in base.items()})
                row.delta_specificity = _paired_delta(spec, {s: float(sp[c]) for s, (_, sp)
                                                             in base.items()})
                row.test, row.test_note = _class_test(pairs[c], left)
            for control, paired in controls.items():
                row.vs_controls.append(_against(control, c, recall, per_seed[control], paired))
            block.rows.append(row)
    _holm(block.rows)
    _holm([c for r in block.rows for c in r.vs_controls])
    for r in block.rows:
        r.flag = _flag(r, margin)
        for c in r.vs_controls:
            c.flag = _flag(c, margin)
    if not base and len(per_seed) > 1:
        block.note = "no FP32 predictions in this data set and backbone: no change against FP32"
    return block


def _select(ok: pd.DataFrame, block: ClinicalBlock, wanted: str | None) -> Selected:
    """The requested configuration where the block has it, else the quantised configuration
    with the highest mean headline accuracy (ties: the first in table order)."""
    configs = ordered_configs(ok)
    if wanted is not None and wanted in configs:
        choice, rule = wanted, "selected with --confusion"
    else:
        quantised = [c for c in configs if int(ok[ok.config == c].w_bits.iloc[0]) != FP32_BITS]
        means = {c: float(ok[ok.config == c].accuracy.mean()) for c in quantised
                 if ok[ok.config == c].accuracy.notna().any()}
        choice = max(means, key=lambda c: (means[c], -configs.index(c))) if means else None
        rule = "the quantised configuration with the highest mean accuracy"
        if wanted is not None:
            rule += f" ({wanted} is not in this data set and backbone)"
    selected = Selected(choice, rule)

    def summed(config: str) -> tuple[np.ndarray | None, int]:
        found = [block.matrices[c] for c in ok[ok.config == config].cell_id
                 if c in block.matrices]
        return (np.sum(found, axis=0) if found else None), len(found)

    if choice is not None:
        selected.matrix, selected.seeds = summed(choice)
    if FP32 in configs:
        selected.fp32, selected.fp32_seeds = summed(FP32)
    return selected


def clinical_view(data: ReportData, margin: float = MARGIN_POINTS,
                  confusion_config: str | None = None) -> list[ClinicalBlock]:
    """Per data set x backbone: per-class rows, flags and the selected confusion matrices.
    ``confusion_config`` must name a configuration of the store (ConfigError otherwise)."""
    if margin < 0 or not np.isfinite(margin):
        raise ConfigError(f"recall margin must be a non-negative number of points, got {margin}")
    if confusion_config is not None and confusion_config not in set(data.ok.get("config", [])):
        known = ", ".join(sorted(set(data.ok.get("config", [])))) or "none"
        raise ConfigError(f"--confusion {confusion_config!r} is not a configuration of the "
                          f"store (known: {known})")
    out = []
    for (dataset, backbone), ok in data.ok.groupby(BLOCK, sort=True):
        block = _block(data, ok, str(dataset), str(backbone), margin)
        if block.classes:
            block.selected = _select(ok, block, confusion_config)
        out.append(block)
    return out


def macro_f1_by_cell(blocks: list[ClinicalBlock]) -> dict[str, float]:
    """Each cell's macro-F1 of its headline predictions (cells without any left out)."""
    return {cid: macro_f1(m) for b in blocks for cid, m in b.matrices.items()}


def describe(block: ClinicalBlock) -> dict[str, Any]:
    """The block as plain data (for the JSON output)."""
    return {"name": block.name, "classes": block.classes, "margin_points": block.margin,
            "flagged": [{"config": r.config, "class": r.class_name, "flag": r.flag,
                         "flags": r.flags} for r in block.flagged],
            "rows": [{"config": r.config, "class": r.class_name, "seeds": r.seeds,
                      "recall": r.recall, "specificity": r.specificity,
                      "delta_recall_points": r.delta_recall,
                      "delta_specificity_points": r.delta_specificity,
                      "p_value": None if r.test is None else r.test.p_value,
                      "p_adjusted": r.p_adjusted, "flag": r.flag,
                      "vs_controls": [{"control": c.control,
                                       "delta_recall_points": c.delta_recall,
                                       "p_value": None if c.test is None else c.test.p_value,
                                       "p_adjusted": c.p_adjusted, "flag": c.flag}
                                      for c in r.vs_controls]} for r in block.rows],
            "confusion": None if block.selected is None else {
                "config": block.selected.config, "rule": block.selected.rule,
                "matrix": _listed(block.selected.matrix), "fp32": _listed(block.selected.fp32)}}


def _listed(matrix: np.ndarray | None) -> list[list[int]] | None:
    return None if matrix is None else matrix.tolist()
