"""The headline table: per data set x backbone, one row per method x bit-width with what a
deployment decision needs (accuracy and what it costs against FP32 and the method's float
control, with the tests' verdicts; size, latency and speed-up per device; integer coverage;
saliency stability with its null control, its float control's stability and each row's own
sanity check), and one plain-language sentence per row built only from the row's own printed
cells.

The float control of QAT, LSQ and PACT is fp32_fold_ft (the FP32 parent in their
BatchNorm-folded graph, fine-tuned like them, nothing quantised): their "Δ float control" and
the control's saliency stability beside theirs are the effect of quantisation. fp32_ft (the
parent fine-tuned in its own graph) is the training-budget control, a row of its own; each
control row's sentence says what it controls for (`Method.control_role`).

Accuracy is each cell's headline accuracy (bench.report.data.headline: the deployed ONNX Runtime
model's where the cell has a deploy stage), mean and 95% t-interval over seeds. A difference is
the mean over the seeds both configurations have of the per-seed difference, in percentage
points. Its mark comes from the existing tests (bench.report.significance), Holm-adjusted
within their family (each configuration vs FP32, each quantised configuration vs its float
control), which the sentence names: the per-image clustered McNemar test with the image as the
unit where both configurations have per-image predictions (it covers variation over test
images for these trained models, not re-training beyond their seeds), else the seed-level
Wilcoxon test (over training seeds); ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001,
``n.s.`` otherwise. Beside each difference the smallest one its test detects (power 0.8 at
alpha 0.05, in points), which a "not significant" sentence quotes. Calibration and
discrimination (ECE in 15 equal-width bins, multi-class Brier score, macro one-vs-rest AUROC;
bench.metrics) are the cells' ``ece``, ``brier`` and ``auroc_macro`` columns (the deployed
model's where the cell has a deploy stage), mean and 95% t-interval over seeds, with their
change against fp32_ft and fp32_fold_ft (mean over the seeds both have) where the store has
those float controls. Anything the store does not hold is printed as "-" in the table and as
"not measured" (or the reason) in the sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.config import FP32_BITS
from bench.report import fmt
from bench.report.clinical import ClinicalBlock, macro_f1_by_cell
from bench.report.data import (
    BLOCK,
    FP32,
    ReportData,
    bits_label,
    config_label,
    ordered_configs,
)
from bench.report.saliency import STAGE, sanity_checks
from bench.report.significance import BlockTests, control_role, float_control, holm_family
from bench.report.tables import Block, Column, Table, device_table, text

ALPHA = stats.ALPHA
MARKS = ((0.001, "***"), (0.01, "**"), (ALPHA, "*"))
NOT_SIGNIFICANT = "n.s."
NOT_MEASURED = "not measured"
PARTIALLY_INTEGER = "partially_integer"
SALIENCY_NAMES = {"gradient": "gradient", "integrated_gradients": "Integrated Gradients",
                  "smoothgrad": "SmoothGrad", "gradcam": "Grad-CAM"}
STABILITY = ("spearman_fp32", "ssim_fp32", "topk_iou_fp32")
"""The stability statistic shown: the first of these the store has for the primary method."""
STABILITY_SYMBOL = {"spearman_fp32": "ρ", "ssim_fp32": "SSIM", "topk_iou_fp32": "top-k IoU"}
CALIBRATION = {"ece": ("ECE", "low"), "brier": ("Brier", "low"),
               "auroc_macro": ("macro AUROC", "high")}
"""The probability metrics shown (bench.metrics: 15-bin ECE, unhalved multi-class Brier score,
macro one-vs-rest AUROC of the deployed model), their labels and better direction."""
CALIBRATION_REFERENCES = ("fp32_ft", "fp32_fold_ft")
"""The float controls each row's calibration is compared with, by name, where the store has
them: fp32_ft (equal training budget, live batch norm) and fp32_fold_ft (the quantised methods'
folded graph with quantisation disabled, same fine-tuning)."""


def mark(p_adjusted: float | None) -> str:
    """The significance mark of a Holm-adjusted p-value ("" when there is none)."""
    if fmt.missing(p_adjusted):
        return ""
    return next((m for level, m in MARKS if p_adjusted < level), NOT_SIGNIFICANT)


@dataclass(frozen=True)
class Difference:
    """A configuration's accuracy minus a reference's, and the test that judges it."""

    reference: str
    points: float | None
    test: str | None = None
    p_adjusted: float | None = None
    reason: str | None = None
    mde: float | None = None
    """Smallest |difference| (points) the test detects with power 0.8 at ``mde_alpha``."""
    mde_alpha: float | None = None
    """The level of ``mde``: 0.05, or 0.05 / m in a Holm family of m tests."""
    family: str | None = None
    """The comparisons its Holm correction is over."""
    scope: str | None = None
    """What the test generalises over."""

    @property
    def significant(self) -> bool | None:
        return None if fmt.missing(self.p_adjusted) else bool(self.p_adjusted < ALPHA)


IMAGE_TEST = "clustered McNemar"
SEED_TEST = "Wilcoxon"
SCOPE = {IMAGE_TEST: "over test images for these trained models, not over re-training beyond "
                     "their seeds",
         SEED_TEST: "over training seeds (new training runs), on the same test images"}
"""What each test's p-value covers, said once at the end of a sentence that uses it."""
Found = tuple[str, Any, str]
"""(test name, result, the family its Holm correction is over)."""


def _results(tests: BlockTests) -> dict[tuple[str, str, str], Found]:
    """(A, B, comparison) -> the accuracy test: the per-image clustered McNemar test first,
    then the seed-level Wilcoxon where it has no p-value."""
    out: dict[tuple[str, str, str], Found] = {}
    for fam in tests.image_families:
        if fam.metric == "accuracy" and fam.test == "clustered_mcnemar":
            for r in fam.results:
                out[(r.name_a, r.name_b, fam.comparison)] = (IMAGE_TEST, r, holm_family(fam))
    for fam in tests.families:
        if fam.metric != "accuracy":
            continue
        for r in fam.results:
            key = (r.name_a, r.name_b, fam.comparison)
            if key not in out or (out[key][1].p_value is None and r.p_value is not None):
                out[key] = (SEED_TEST, r, holm_family(fam))
    return out


def _skipped(tests: BlockTests) -> dict[str, str]:
    """A -> why its per-image comparison was skipped, from the families' notes."""
    out = {}
    for fam in tests.image_families:
        for note in fam.skipped:
            name, _, why = note.partition(" vs ")
            out.setdefault(name, why.partition(": ")[2] or note)
    return out


def _paired_mean(ok: pd.DataFrame, a: str, b: str, column: str) -> float | None:
    """Mean over the seeds both configurations have of (a - b) in ``column``."""
    if column not in ok:
        return None
    values = pd.to_numeric(ok[column], errors="coerce")
    mine = values[(ok.config == a).to_numpy()].set_axis(ok.seed[ok.config == a])
    theirs = values[(ok.config == b).to_numpy()].set_axis(ok.seed[ok.config == b])
    both = (mine - theirs.reindex(mine.index)).dropna()
    return None if both.empty else float(both.mean())


def _paired_points(ok: pd.DataFrame, a: str, b: str) -> float | None:
    diff = _paired_mean(ok, a, b, "accuracy")
    return None if diff is None else 100.0 * diff


def _difference(ok: pd.DataFrame, a: str, b: str, comparison: str,
                results: dict[tuple[str, str, str], Found],
                skipped: dict[str, str]) -> Difference:
    points = _paired_points(ok, a, b)
    found = results.get((a, b, comparison))
    if found is None:
        return Difference(b, points, reason=skipped.get(a) or (
            "no test" if points is not None else "no seed in common"))
    name, result, family = found
    if result.p_value is None:
        return Difference(b, points, name, reason=result.reason)
    mde = None if fmt.missing(result.mde) else 100.0 * float(result.mde)
    return Difference(b, points, name, result.p_adjusted, mde=mde,
                      mde_alpha=result.mde_alpha if mde is not None else None, family=family,
                      scope=SCOPE[name])


def _mean(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return None if v.empty else float(v.mean())


def _ci(values: pd.Series) -> tuple[float | None, float | None, float | None]:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return stats.mean_ci(v) if v.size else (None, None, None)


def _size(ok: pd.DataFrame) -> float | None:
    """Mean over seeds of the shipped artifact's bytes (the ONNX file a device runs)."""
    for column in ("shipped_size_bytes", "size_bytes"):
        if column in ok and (value := _mean(ok[column])) is not None:
            return value
    return None


def _coverage(ok: pd.DataFrame, quantised: bool) -> tuple[float | None, str]:
    """Mean integer coverage and its cell text, with the partially integer seeds."""
    value = _mean(ok["int_coverage"]) if "int_coverage" in ok else None
    if not quantised:
        return value, "float"
    if value is None:
        return None, fmt.DASH
    flags = ok.deploy_flags.fillna("") if "deploy_flags" in ok else pd.Series([], dtype=str)
    partial = sum(PARTIALLY_INTEGER in str(f).split(",") for f in flags)
    shown = fmt.num(value, 2)
    return value, (f"{shown} ({PARTIALLY_INTEGER} {partial}/{len(ok)})" if partial else shown)


def primary_saliency(data: ReportData, ok: pd.DataFrame) -> str | None:
    """The block's primary saliency method (the grid's first), from its cells' saliency stage."""
    for cid in ok.cell_id:
        stage = (data.records[cid].metrics or {}).get(STAGE)
        if isinstance(stage, dict) and stage.get("primary"):
            return str(stage["primary"])
    return None


def stability_metric(ok: pd.DataFrame) -> str | None:
    return next((m for m in STABILITY if f"saliency_{m}" in ok
                 and pd.to_numeric(ok[f"saliency_{m}"], errors="coerce").notna().any()), None)


def columns(devices: list[str], references: tuple[str, ...] = ()) -> list[Column]:
    """The headline columns: per device its p50 and speed-up over FP32 on that device; the
    calibration metrics, and their change against each float control in ``references``."""
    cols = [Column("config", "configuration", "text"), Column("seeds", "seeds", "int"),
            Column("model", "model", "text"),
            Column("accuracy", "accuracy (95% CI)", "ci", "high"),
            Column("retained", "% of FP32 acc.", "pct", "high"),
            Column("d_fp32", "Δ FP32 (points)", "points", None, "vs FP32"),
            Column("p_fp32", "p (Holm)", "text", None, "vs FP32"),
            Column("mde_fp32", "detectable |Δ|", "float", None, "vs FP32", 1),
            Column("control", "float control", "text", None, "vs float control"),
            Column("d_control", "Δ (points)", "points", None, "vs float control"),
            Column("p_control", "p (Holm)", "text", None, "vs float control"),
            Column("mde_control", "detectable |Δ|", "float", None, "vs float control", 1),
            Column("macro_f1", "macro-F1", "float", "high"),
            *(Column(k, f"{label} (95% CI)", "ci", better, "calibration", 3)
              for k, (label, better) in CALIBRATION.items())]
    for ref in references:
        cols += [Column(f"d_{k}@{ref}", f"Δ {label}", "delta", None, f"calibration vs {ref}", 3)
                 for k, (label, _) in CALIBRATION.items()]
    cols.append(Column("size_pct", "size % FP32", "pct", "low"))
    for device in devices:
        cols += [Column(f"p50@{device}", "p50 ms", "ms", "low", device),
                 Column(f"speedup@{device}", "speed-up", "ratio", "high", device)]
    cols += [Column("coverage", "int. coverage", "text"),
             Column("stability", "saliency vs FP32", "ci", "high", "saliency", 2),
             Column("null_stability", "null control", "float", None, "saliency", 2),
             Column("control_stability", "float control", "float", None, "saliency", 2),
             Column("sanity", "sanity check", "text", None, "saliency")]
    return cols


def _p_text(d: Difference) -> str:
    return f"{fmt.pval(d.p_adjusted)} {d.test}" if d.p_adjusted is not None else fmt.DASH


def _row(data: ReportData, ok: pd.DataFrame, config: str, base: dict[str, Any] | None,
         results: dict[tuple[str, str, str], Found], skipped: dict[str, str],
         f1: dict[str, float], devices: dict[str, Any]) -> dict[str, Any]:
    mine = ok[ok.config == config]
    first = mine.iloc[0]
    method, w, a = str(first.method), int(first.w_bits), int(first.a_bits)
    quantised = w != FP32_BITS
    sources = set(mine.accuracy_source)
    row: dict[str, Any] = {"config": config, "method": method, "w_bits": w, "a_bits": a,
                           "bits": bits_label(w, a), "seeds": int(mine.seed.nunique()),
                           "model": "deployed" if sources == {"deployed"} else
                           "PyTorch" if sources == {"torch"} else "mixed"}
    row["accuracy"], row["accuracy_low"], row["accuracy_high"] = _ci(mine.accuracy)
    row["macro_f1"] = _mean(pd.Series([f1.get(c) for c in mine.cell_id], dtype=float))
    for key in CALIBRATION:
        if key in mine:
            row[key], row[f"{key}_low"], row[f"{key}_high"] = _ci(mine[key])
        for ref in CALIBRATION_REFERENCES:
            if config != ref and ref in set(ok.config):
                row[f"d_{key}@{ref}"] = _paired_mean(ok, config, ref, key)
    row["size_bytes"] = _size(mine)
    row["int_coverage"], row["coverage"] = _coverage(mine, quantised)
    row["devices"] = []
    for key, value in devices.get(config, {}).items():
        row[key] = value
        if key.startswith("p50@") and not fmt.missing(value):
            row["devices"].append(key.removeprefix("p50@"))
    if base is not None and config != FP32:
        ref = base.get("accuracy")
        row["retained"] = (None if fmt.missing(ref) or fmt.missing(row["accuracy"]) or not ref
                           else 100.0 * row["accuracy"] / ref)
        ref_size = base.get("size_bytes")
        row["size_pct"] = (None if fmt.missing(ref_size) or fmt.missing(row["size_bytes"])
                           or not ref_size else 100.0 * row["size_bytes"] / ref_size)
        row["vs_fp32"] = _difference(ok, config, FP32, "vs_fp32", results, skipped)
    elif config == FP32:
        row["retained"] = 100.0 if not fmt.missing(row["accuracy"]) else None
        row["size_pct"] = 100.0 if row["size_bytes"] is not None else None
    row["role"] = control_role(method)
    control = float_control(method) if quantised else None
    if control is not None:
        label = config_label(control, FP32_BITS, FP32_BITS)
        row["control"] = label
        if label in set(ok.config):
            row["vs_control"] = _difference(ok, config, label, "vs_control", results,
                                            skipped)
        else:
            row["control_missing"] = True
    for key, d in (("fp32", row.get("vs_fp32")), ("control", row.get("vs_control"))):
        if d is not None:
            row[f"d_{key}"], row[f"d_{key}_mark"] = d.points, mark(d.p_adjusted)
            row[f"p_{key}"] = _p_text(d)
            row[f"p_{key}_why"] = d.reason
            row[f"mde_{key}"] = d.mde
            row[f"mde_alpha_{key}"] = d.mde_alpha
    return row


def _add_saliency(data: ReportData, ok: pd.DataFrame, rows: list[dict[str, Any]]) -> None:
    metric = stability_metric(ok)
    method = primary_saliency(data, ok)
    checks = sanity_checks(data)
    block = (str(ok.dataset.iloc[0]), str(ok.backbone.iloc[0]))
    for row in rows:
        sanity = checks.get((*block, row["config"], method or ""))
        mine = ok[ok.config == row["config"]]
        row["saliency_method"] = method
        row["stability_metric"] = metric
        if metric is not None:
            row["stability"], row["stability_low"], row["stability_high"] = _ci(
                mine[f"saliency_{metric}"])
            null = f"saliency_null_{metric}"
            row["null_stability"] = _mean(mine[null]) if null in mine else None
            control = ok[ok.config == row.get("control")] if row.get("control") else ok[:0]
            row["control_stability"] = _mean(control[f"saliency_{metric}"]) \
                if len(control) else None
        if sanity is not None:
            row["sanity"] = sanity.text()
            row["sanity_fails"] = sanity.fails


def headline_table(data: ReportData, tests: list[BlockTests],
                   clinical: list[ClinicalBlock]) -> Table:
    """Per data set x backbone (the order of ``tests``), one row per configuration of its
    successful cells, FP32 first; each row's ``sentence`` says it in words."""
    present = set(data.ok.config) if len(data.ok) else set()
    cols = columns(data.devices, tuple(r for r in CALIBRATION_REFERENCES if r in present))
    f1 = macro_f1_by_cell(clinical)
    by_block = dict(iter(data.ok.groupby(BLOCK, sort=True))) if len(data.ok) else {}
    speed = {(b.dataset, b.backbone): {r["config"]: {k: v for k, v in r.items()
                                                      if k != "config"} for r in b.rows}
             for b in device_table(data).blocks}
    blocks = []
    for t in tests:
        ok = by_block[(t.dataset, t.backbone)]
        results, skipped = _results(t), _skipped(t)
        devices = speed.get((t.dataset, t.backbone), {})
        rows: list[dict[str, Any]] = []
        configs = ordered_configs(ok)
        base = None
        if FP32 in configs:
            base = _row(data, ok, FP32, None, results, skipped, f1, devices)
        for config in configs:
            rows.append(base if config == FP32 and base is not None else
                        _row(data, ok, config, base, results, skipped, f1, devices))
        _add_saliency(data, ok, rows)
        for row in rows:
            row["sentence"] = sentence(row, cols, base is not None)
        blocks.append(Block(t.name, t.dataset, t.backbone, rows))
    return Table(cols, blocks)


# --- sentences -----------------------------------------------------------------------------


def _cell(cols: dict[str, Column], row: dict[str, Any], key: str) -> str:
    return text(cols[key], row)


def _level(alpha: float | None) -> str:
    """" at α/m = 0.05/3 = 0.0167" for a Holm family of m > 1 tests; "" at 0.05."""
    if alpha is None or alpha >= stats.ALPHA:
        return ""
    m = round(stats.ALPHA / alpha)
    return f" at α/m = {stats.ALPHA:g}/{m} = {alpha:.3g}"


def _verdict(cols: dict[str, Column], row: dict[str, Any], key: str) -> str:
    """"difference not significant (detectable from 1.2 points), Holm-adjusted clustered
    McNemar p = 0.41 (Holm over each configuration vs FP32)" from the printed cells; the
    reason otherwise."""
    d: Difference = row[f"vs_{key}"]
    if d.p_adjusted is None:
        why = (d.reason or "").removesuffix(": no test").removesuffix(" no test")
        return f"not tested: {why}" if why else "not tested"
    word = "significant" if d.significant else "not significant"
    if not d.significant:
        word += (f" (detectable from {_cell(cols, row, f'mde_{key}')} points"
                 f"{_level(d.mde_alpha)})"
                 if d.mde is not None and f"mde_{key}" in cols else
                 " (smallest detectable difference not computed)")
    family = f" (Holm over {d.family})" if d.family else ""
    return f"difference {word}, Holm-adjusted {d.test} p = {fmt.pval(d.p_adjusted)}{family}"


def _delta(cols: dict[str, Column], row: dict[str, Any], key: str) -> str:
    """"-1.8 points, difference not significant (...), Holm-adjusted ... p = 0.41 (...)"."""
    d: Difference = row[f"vs_{key}"]
    if d.points is None:
        return "no seed in common"
    shown = _cell(cols, {**row, f"d_{key}_mark": None}, f"d_{key}")
    return f"{shown} points, {_verdict(cols, row, key)}"


def _devices(cols: dict[str, Column], row: dict[str, Any], devices: list[str],
             reference: bool) -> str:
    parts = []
    for device in devices:
        p50 = row.get(f"p50@{device}")
        if fmt.missing(p50):
            parts.append(f"latency on {device} {NOT_MEASURED}")
            continue
        speedup = row.get(f"speedup@{device}")
        shown = _cell(cols, row, f"p50@{device}")
        if reference:
            parts.append(f"p50 {shown} ms on {device}")
        elif fmt.missing(speedup):
            parts.append(f"p50 {shown} ms on {device} (speed-up {NOT_MEASURED})")
        else:
            ratio = _cell(cols, row, f"speedup@{device}")
            how = "faster than FP32" if float(ratio.rstrip("x")) > 1 else "FP32's speed"
            parts.append(f"{ratio} {how} on {device} (p50 {shown} ms)")
    return ", ".join(parts) if parts else f"latency {NOT_MEASURED}"


def _saliency_clause(cols: dict[str, Column], row: dict[str, Any], fp32: bool) -> str:
    method = SALIENCY_NAMES.get(row.get("saliency_method") or "", row.get("saliency_method"))
    metric = row.get("stability_metric")
    parts = []
    if not fp32:
        if method is None or metric is None or fmt.missing(row.get("stability")):
            parts.append(f"saliency stability against FP32 {NOT_MEASURED}")
        else:
            symbol = STABILITY_SYMBOL[metric]
            null = ("its null control is " + NOT_MEASURED if fmt.missing(row.get(
                "null_stability")) else f"null control {symbol} = "
                f"{_cell(cols, row, 'null_stability')}")
            if row.get("control"):
                null += (f"; its float control {row['control']}'s maps {NOT_MEASURED}"
                         if fmt.missing(row.get("control_stability")) else
                         f"; its float control {row['control']} {symbol} = "
                         f"{_cell(cols, row, 'control_stability')}")
            parts.append(f"its {method} maps agree with FP32 at {symbol} = "
                         f"{fmt.num(row['stability'], cols['stability'].digits or 2)} ({null})")
    sanity = row.get("sanity")
    if sanity is None:
        parts.append(f"sanity check {NOT_MEASURED}")
    else:
        verdict = f"the sanity check of its {method or 'primary saliency'} maps: {sanity}"
        if row.get("sanity_fails"):
            verdict += " (the maps do not describe the model)"
        parts.append(verdict)
    return "; ".join(parts)


def _calibration_clause(cols: dict[str, Column], row: dict[str, Any]) -> str:
    """"calibration: ECE 0.041 ± 0.010, Brier ..., macro AUROC ...; against fp32_ft Δ ECE
    +0.004, ..." from the printed cells; "calibration not measured" without them."""
    shown = [f"{label} {_cell(cols, row, k)}" for k, (label, _) in CALIBRATION.items()
             if k in cols and not fmt.missing(row.get(k))]
    if not shown:
        return f"calibration {NOT_MEASURED}"
    parts = [f"calibration: {', '.join(shown)}"]
    for ref in CALIBRATION_REFERENCES:
        deltas = [f"Δ {label} {_cell(cols, row, f'd_{k}@{ref}')}"
                  for k, (label, _) in CALIBRATION.items()
                  if f"d_{k}@{ref}" in cols and not fmt.missing(row.get(f"d_{k}@{ref}"))]
        if deltas:
            parts.append(f"against {ref} {', '.join(deltas)}")
    return "; ".join(parts)


def sentence(row: dict[str, Any], cols_list: list[Column], has_fp32: bool) -> str:
    """The row in words, every number copied from the row's printed cells; whatever is
    missing is said to be "not measured" or why it was not tested."""
    cols = {c.key: c for c in cols_list}
    devices = [c.group for c in cols_list if c.key.startswith("p50@")]
    config, fp32 = row["config"], row["config"] == FP32
    model = {"deployed": "", "PyTorch": " (PyTorch model: no deployed predictions stored)",
             "mixed": " (deployed model on some seeds, PyTorch model on others)"}[row["model"]]
    accuracy = _cell(cols, row, "accuracy")
    if fmt.missing(row.get("accuracy")):
        head = f"{config}{model}: accuracy {NOT_MEASURED}"
    elif fp32:
        head = f"{config}{model} is the reference: accuracy {accuracy}"
    elif not has_fp32:
        head = f"{config}{model} has accuracy {accuracy} (no FP32 here to compare with)"
    else:
        retained = row.get("retained")
        head = (f"{config}{model} keeps {_cell(cols, row, 'retained')} of FP32's accuracy"
                if not fmt.missing(retained) else f"{config}{model} has accuracy {accuracy}")
        head += f" ({accuracy}, {_delta(cols, row, 'fp32')})"
    if "vs_control" in row:
        head += (f"; against its float control {row['control']} "
                 f"{_delta(cols, row, 'control')}")
    elif row.get("control_missing"):
        head += f"; its float control {row['control']} {NOT_MEASURED}"
    if row.get("role"):
        head += f"; {config} is {row['role']}"
    f1 = _cell(cols, row, "macro_f1")
    head += f"; macro-F1 {f1 if not fmt.missing(row.get('macro_f1')) else NOT_MEASURED}"
    head += f"; {_calibration_clause(cols, row)}"
    if not fp32 and has_fp32:
        size = (f"at {_cell(cols, row, 'size_pct')} of FP32's size"
                if not fmt.missing(row.get("size_pct")) else f"size {NOT_MEASURED}")
    else:
        size = "" if not fmt.missing(row.get("size_bytes")) else f"size {NOT_MEASURED}"
    speed = _devices(cols, row, devices, reference=fp32)
    parts = [head, ", ".join(p for p in (size, speed) if p)]
    if row["w_bits"] != FP32_BITS:
        parts.append(f"integer coverage {row['coverage']}" if row.get("int_coverage") is not None
                     else f"integer coverage {NOT_MEASURED}")
    parts.append(_saliency_clause(cols, row, fp32))
    tests = dict.fromkeys(d.test for d in (row.get("vs_fp32"), row.get("vs_control"))
                          if d is not None and d.p_adjusted is not None and d.scope)
    scope = "".join(f" The {test} test covers variation {SCOPE[test]}." for test in tests)
    return "; ".join(p for p in parts if p) + "." + scope
