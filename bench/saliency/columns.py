"""Per-method statistics of a cell's saliency results, and the `saliency_*` result columns.

Column names: `saliency_<metric>` for the grid's first (primary) saliency method and
`saliency_<metric>/<method>` for every method. A metric that was not computed (no reference
maps, no masks) is None, so every cell of a grid has the same columns. Beside the statistics:
`saliency_null_<metric>` (the null control of each FP32-comparison statistic, quantised cells;
bench.saliency.null) and `saliency_sanity_spearman` (the cascading-randomisation sanity check,
every cell; bench.saliency.sanity).
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("spearman_fp32", "ssim_fp32", "topk_iou_fp32", "max_sensitivity", "pointing_game",
           "energy_pointing", "topk_iou_mask", "deletion_auc", "deletion_auc_norm",
           "deletion_auc_random", "deletion_gain", "insertion_auc", "insertion_auc_norm",
           "insertion_auc_random", "insertion_gain")
NULL_PREFIX = "null_"
NULL_METRICS = ("spearman_fp32", "ssim_fp32", "topk_iou_fp32")
"""The statistics the null control repeats: those comparing a cell's maps with FP32's."""
SANITY = "sanity_spearman"


def column_name(metric: str, method: str | None = None) -> str:
    return f"saliency_{metric}" if method is None else f"saliency_{metric}/{method}"


def json_float(value: float) -> float | None:
    """A finite float, or None (NaN and inf are not JSON)."""
    return float(value) if np.isfinite(value) else None


def describe(values: np.ndarray) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and count over the finite values, plus every value."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    return {"mean": json_float(ok.mean()) if ok.size else None,
            "std": json_float(ok.std(ddof=1)) if ok.size > 1 else None,
            "n": int(ok.size),
            "values": [json_float(x) for x in v]}


def method_stats(results: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """stability_suite output -> {method: {metric: describe(values)}} (maps left out)."""
    return {method: {metric: describe(values) for metric, values in res.items()
                     if metric != "maps"}
            for method, res in results.items()}


def _columns(means: dict[str, dict[str, float | None]], metrics: tuple[str, ...],
             methods: list[str], prefix: str = "") -> dict[str, Any]:
    columns = {column_name(prefix + m): means.get(methods[0], {}).get(m) for m in metrics}
    for method in methods:
        columns.update({column_name(prefix + m, method): means.get(method, {}).get(m)
                        for m in metrics})
    return columns


def _means(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {method: {metric: d.get("mean") for metric, d in res.items()}
            for method, res in stats.items()}


def result_columns(stats: dict[str, dict[str, Any]], methods: list[str],
                   null: dict[str, Any] | None = None, sanity: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Mean of every metric per method (the first method's also without the suffix), of the
    null control's statistics (`null`: NullControl.describe()) and the sanity check's final
    Spearman (`sanity`: SanityResult.describe()); None where not computed."""
    columns = _columns(_means(stats), METRICS, methods)
    columns.update(_columns(_means((null or {}).get("stats") or {}), NULL_METRICS, methods,
                            NULL_PREFIX))
    final = {m: {SANITY: r["spearman"][-1] if r.get("spearman") else None}
             for m, r in ((sanity or {}).get("methods") or {}).items()}
    columns.update(_columns(final, (SANITY,), methods))
    return columns


def declared_columns(settings: Any) -> list[str]:
    """The `saliency_*` columns a stage with these settings (SaliencyConfig) returns."""
    return list(result_columns({}, settings.methods))
