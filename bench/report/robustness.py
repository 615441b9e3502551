"""The report's "Robustness to artefacts" view, from the `robustness` stage's records and files.

Per data set and backbone and per configuration: mCE and relative mCE against the FP32 parent
(bench.robustness.metrics; FP32 scores 100), mean and 95% t-interval over seeds; accuracy against
severity per corruption (mean over seeds, for the small multiples); and per corruption the
configuration against FP32 on the same images with the clustered McNemar test (image as the
unit, its seeds and severities as the cluster; bench.stats.clustered_mcnemar), Holm-corrected
over every configuration and corruption of the block. A configuration is flagged when its clean
accuracy is within FLAG_CLEAN_POINTS of FP32 but its mCE is more than FLAG_MCE_POINTS worse.
Figures and tests use the deployed ONNX model where both cells have it, else the torch model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.report.data import BLOCK, FP32, ReportData, ordered_configs

RESULT_FILE = "robustness.npz"      # bench.robustness.stage.RESULT_FILE (no torch import here)
FLAG_CLEAN_POINTS = 1.0
FLAG_MCE_POINTS = 5.0


@dataclass
class RobustnessRow:
    config: str
    seeds: int
    clean_delta: float | None          # points, clean accuracy vs FP32 (mean over seeds)
    mce: tuple[float, float | None, float | None] | None
    relative_mce: tuple[float, float | None, float | None] | None
    onnx_mce: tuple[float, float | None, float | None] | None
    flag: str | None = None
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RobustnessBlock:
    name: str
    corruptions: list[str]
    severities: list[int]
    rows: list[RobustnessRow]
    curves: dict[str, dict[str, list[float]]]    # corruption -> config -> accuracy per severity
    engine: str


def _ci(values: pd.Series) -> tuple[float, float | None, float | None] | None:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return stats.mean_ci(v) if np.isfinite(v).any() else None


def _load(data: ReportData, cell_id: str) -> dict[str, np.ndarray] | None:
    folder = data.artifact_dir(cell_id)
    if folder is None or not (folder / RESULT_FILE).exists():
        return None
    with np.load(folder / RESULT_FILE) as f:
        return {k: f[k] for k in f.files}


def _engine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str:
    return "onnx" if "onnx/corrupted" in a and "onnx/corrupted" in b else "torch"


def robustness_view(data: ReportData) -> list[RobustnessBlock]:
    """One block per data set and backbone whose cells ran the robustness stage."""
    if not len(data.ok) or "robustness_mce" not in data.ok:
        return []
    out = []
    for (dataset, backbone), cells in data.ok.groupby(BLOCK, sort=True):
        cells = cells[pd.to_numeric(cells.robustness_mce, errors="coerce").notna()]
        if not len(cells):
            continue
        files = {cid: _load(data, cid) for cid in cells.cell_id}
        fp32 = {int(r.seed): files[r.cell_id] for r in cells.itertuples()
                if r.config == FP32 and files[r.cell_id] is not None}
        fp32_acc = cells[cells.config == FP32].set_index("seed").accuracy
        first = next((f for f in files.values() if f is not None), None)
        if first is None:
            continue
        corruptions = [str(c) for c in first["corruptions"]]
        severities = [int(s) for s in first["severities"]]
        rows, curves, pending = [], {c: {} for c in corruptions}, []
        engine = "torch"
        for config in ordered_configs(cells):
            part = cells[cells.config == config]
            deltas = [100 * (r.accuracy - fp32_acc[r.seed]) for r in part.itertuples()
                      if r.seed in fp32_acc.index]
            row = RobustnessRow(config, len(part), float(np.mean(deltas)) if deltas else None,
                                _ci(part.robustness_mce), _ci(part.robustness_relative_mce),
                                _ci(part.robustness_onnx_mce))
            pairs = [(files[r.cell_id], fp32[int(r.seed)]) for r in part.itertuples()
                     if files[r.cell_id] is not None and int(r.seed) in fp32
                     and np.array_equal(files[r.cell_id]["index"], fp32[int(r.seed)]["index"])]
            if pairs:
                engine = _engine(*pairs[0])
                acc = np.mean([a[f"{engine}/corrupted"].mean(axis=2) for a, _ in pairs], axis=0)
                for i, c in enumerate(corruptions):
                    curves[c][config] = [float(x) for x in acc[i]]
                if config != FP32:
                    for i, c in enumerate(corruptions):
                        # rows: (seed, severity); columns: the images; the image is the cluster
                        mine = np.concatenate([a[f"{engine}/corrupted"][i] for a, _ in pairs])
                        ref = np.concatenate([b[f"{engine}/corrupted"][i] for _, b in pairs])
                        pending.append((row, c, stats.clustered_mcnemar(mine, ref,
                                                                        power=False)))
            mce = row.mce[0] if row.mce else None
            if (row.clean_delta is not None and mce is not None
                    and abs(row.clean_delta) <= FLAG_CLEAN_POINTS
                    and mce > 100 + FLAG_MCE_POINTS):
                row.flag = (f"clean within {FLAG_CLEAN_POINTS:g} point of FP32, mCE "
                            f"{mce:.1f} (more than {FLAG_MCE_POINTS:g} points worse)")
            rows.append(row)
        adjusted = stats.holm([t.p_value for _, _, t in pending])
        for (row, c, t), p in zip(pending, adjusted, strict=True):
            row.tests[c] = {"diff": t.diff_mean, "p": t.p_value, "p_holm": p,
                            "reason": t.reason}
        out.append(RobustnessBlock(f"{dataset} / {backbone}", corruptions, severities, rows,
                                   curves, engine))
    return out


def severity_panels(block: RobustnessBlock) -> Any:
    """Small multiples: accuracy against severity per configuration, one panel per corruption."""
    from matplotlib.figure import Figure

    n = len(block.corruptions)
    cols = min(n, 4)
    fig = Figure(figsize=(3.0 * cols, 2.6 * ((n + cols - 1) // cols)), layout="constrained")
    axes = fig.subplots((n + cols - 1) // cols, cols, squeeze=False).ravel()
    for ax, c in zip(axes, block.corruptions, strict=False):
        for config, acc in block.curves[c].items():
            ax.plot(block.severities, acc, marker="o", ms=3, label=config,
                    lw=2.0 if config == FP32 else 1.0)
        ax.set_title(c.replace("_", " "), fontsize=9)
        ax.set_xticks(block.severities)
        ax.set_xlabel("severity", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    if block.curves and block.curves[block.corruptions[0]]:
        axes[0].legend(fontsize=6)
    return fig
