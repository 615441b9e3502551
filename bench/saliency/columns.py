"""Per-method statistics of a cell's saliency results, and the `saliency_*` result columns.

Column names: `saliency_<metric>` for the grid's first (primary) saliency method and
`saliency_<metric>/<method>` for every method. A metric that was not computed (no reference
maps, no masks) is None, so every cell of a grid has the same columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("spearman_fp32", "ssim_fp32", "topk_iou_fp32", "max_sensitivity", "pointing_game",
           "energy_pointing", "topk_iou_mask", "deletion_auc", "insertion_auc")


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


def result_columns(stats: dict[str, dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Mean of every metric per method; the first method's also without the suffix."""
    def mean(method: str, metric: str) -> float | None:
        return stats.get(method, {}).get(metric, {}).get("mean")

    columns = {column_name(metric): mean(methods[0], metric) for metric in METRICS}
    for method in methods:
        columns.update({column_name(metric, method): mean(method, metric) for metric in METRICS})
    return columns
