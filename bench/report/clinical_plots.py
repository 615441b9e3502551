"""The clinical view's figure: a seaborn heatmap of each configuration's change in per-class
recall against FP32, flagged classes outlined (inline SVG, like bench.report.plots)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bench.report.plots import RC, to_svg

CMAP = "RdBu"
"""Diverging, centred on 0: red where recall falls, blue where it rises."""


def per_class_heatmap_figure(frame: pd.DataFrame) -> Figure | None:
    """Rows: configurations, columns: classes, colour and number: recall change in points
    against FP32 (``frame``: config, class, delta_recall, flagged, as
    bench.report.clinical.ClinicalBlock.heatmap_frame gives it); None without any value."""
    if frame.empty or frame.delta_recall.notna().sum() == 0:
        return None
    values = frame.pivot_table(index="config", columns="class", values="delta_recall",
                               aggfunc="first", observed=False, dropna=False)
    flagged = frame.pivot_table(index="config", columns="class", values="flagged",
                                aggfunc="any", observed=False, dropna=False)
    limit = float(np.nanmax(np.abs(values.to_numpy(dtype=float)))) or 1.0
    n_rows, n_cols = values.shape
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(1.6 + 0.75 * n_cols, 1.2 + 0.32 * n_rows), layout="constrained")
        ax = fig.subplots()
        sns.heatmap(values, ax=ax, cmap=CMAP, center=0.0, vmin=-limit, vmax=limit, annot=True,
                    fmt=".1f", annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white",
                    cbar_kws={"label": "recall change vs FP32 (points)"})
        ax.collections[-1].colorbar.solids.set_rasterized(True)   # one image, not 256 paths
        for i, j in zip(*np.nonzero(flagged.fillna(False).to_numpy(dtype=bool)), strict=True):
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="black", lw=2))
        ax.set_xlabel("class (outlined: flagged)")
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.tick_params(axis="y", labelrotation=0)
    return fig


def per_class_heatmap(frame: pd.DataFrame) -> str | None:
    """per_class_heatmap_figure as an inline <svg> element (None without any value); saved
    under the same rc settings, so its text stays text."""
    with matplotlib.rc_context(RC):
        fig = per_class_heatmap_figure(frame)
        return None if fig is None else to_svg(fig)
