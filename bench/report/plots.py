"""Figures as inline SVG (text kept as text, no external fonts): trade-offs with their Pareto
front, bit-width vs accuracy, saliency distributions, critical-difference diagrams.

Each function returns None when its data is missing; the template then says so in words.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench import stats
from bench.report import fmt
from bench.report.data import FLOAT_BITS, METHOD_ORDER, bits_label
from bench.report.tables import Block

RC = {"svg.fonttype": "none", "svg.hashsalt": "medq-bench", "font.size": 8,
      "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
      "axes.grid": True, "grid.alpha": 0.3}
MARKERS = "os^DvP*Xph"
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)


def to_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (XML prolog and doctype removed)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return _PROLOG.sub("", buffer.getvalue(), count=1)


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal x and higher or equal y,
    one strictly), ordered by x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return front


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    known = sorted(set(methods), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER
                                                else len(METHOD_ORDER), m))
    palette = sns.color_palette("tab10", max(len(known), 1))
    return dict(zip(known, palette, strict=False))


def _markers(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    bits = sorted({(r["w_bits"], r["a_bits"]) for r in rows}, reverse=True)
    return {bits_label(w, a): MARKERS[i % len(MARKERS)] for i, (w, a) in enumerate(bits)}


def _scatter(ax: Any, rows: list[dict[str, Any]], xkey: str, xlabel: str, log: bool) -> None:
    colors, markers = _colors([r["method"] for r in rows]), _markers(rows)
    pts = [r for r in rows if not fmt.missing(r.get(xkey)) and not fmt.missing(r["accuracy"])]
    for r in pts:
        low, high = r.get("accuracy_low"), r.get("accuracy_high")
        err = None if fmt.missing(low) else [[r["accuracy"] - low], [high - r["accuracy"]]]
        ax.errorbar(r[xkey], r["accuracy"], yerr=err, fmt=markers[bits_label(r["w_bits"],
                    r["a_bits"])], color=colors[r["method"]], ms=6, capsize=2, lw=0.8)
    front = [pts[i] for i in pareto_front([r[xkey] for r in pts], [r["accuracy"] for r in pts])]
    ax.step([r[xkey] for r in front], [r["accuracy"] for r in front], where="post",
            color="black", lw=1, ls="--", zorder=0)
    for r in front:
        ax.annotate(r["config"], (r[xkey], r["accuracy"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (mean, 95% CI)")


def _legend(fig: Figure, rows: Sequence[dict[str, Any]]) -> None:
    colors, markers = _colors([r["method"] for r in rows]), _markers(rows)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="grey", marker=k, ls="", label=b)
                for b, k in markers.items()]
    handles.append(Line2D([], [], color="black", ls="--", label="Pareto front"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)


def tradeoff(block: Block, devices: Sequence[str]) -> str | None:
    """Accuracy vs packed size and vs p50 latency on each device, Pareto front dashed."""
    panels = []
    if any(not fmt.missing(r.get("packed_size_bytes")) for r in block.rows):
        panels.append(("packed_size_bytes", "packed model size (bytes, log)", True))
    panels += [(f"p50@{d}", f"p50 latency on {d} (ms, log)", True) for d in devices
               if any(not fmt.missing(r.get(f"p50@{d}")) for r in block.rows)]
    if not panels:
        return None
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(3.4 * len(panels) + 1.4, 3.2), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, label, log) in zip(axes, panels, strict=True):
            _scatter(ax, block.rows, key, label, log)
        _legend(fig, block.rows)
        return to_svg(fig)


def bits_accuracy(block: Block) -> str | None:
    """Accuracy (mean, 95% CI) against bit-width per quantised method; float methods as lines."""
    quant = [r for r in block.rows if r["w_bits"] != FLOAT_BITS and not fmt.missing(r["accuracy"])]
    if not quant:
        return None
    order = sorted({(r["w_bits"], r["a_bits"]) for r in quant}, reverse=True)
    position = {bits_label(w, a): i for i, (w, a) in enumerate(order)}
    colors = _colors([r["method"] for r in block.rows])
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(5.8, 3.2), layout="constrained")
        ax = fig.subplots()
        for method in colors:
            mine = sorted((r for r in quant if r["method"] == method),
                          key=lambda r: position[bits_label(r["w_bits"], r["a_bits"])])
            if not mine:
                continue
            x = [position[bits_label(r["w_bits"], r["a_bits"])] for r in mine]
            y = [r["accuracy"] for r in mine]
            err = [[0.0 if fmt.missing(r["accuracy_low"]) else r["accuracy"] - r["accuracy_low"]
                    for r in mine],
                   [0.0 if fmt.missing(r["accuracy_high"]) else r["accuracy_high"] - r["accuracy"]
                    for r in mine]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=2, color=colors[method],
                        label=method, lw=1)
        for style, r in zip(("-", ":", "-."), (r for r in block.rows
                                                if r["w_bits"] == FLOAT_BITS
                                                and not fmt.missing(r["accuracy"])), strict=False):
            ax.axhline(r["accuracy"], color=colors[r["method"]], ls=style, lw=1,
                       label=f"{r['config']} (float)")
            if not fmt.missing(r["accuracy_low"]):
                ax.axhspan(r["accuracy_low"], r["accuracy_high"], color=colors[r["method"]],
                           alpha=0.1, lw=0)
        ax.set_xticks(range(len(order)), [bits_label(w, a) for w, a in order])
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xlabel("bit-width (weights, activations)")
        ax.set_ylabel("accuracy (mean, 95% CI)")
        fig.legend(loc="outside right upper", fontsize=7, frameon=False)
        return to_svg(fig)


def saliency_distribution(values: pd.DataFrame, label: str) -> str | None:
    """Box plots of per-sample values of one saliency metric per configuration and method."""
    if values.empty:
        return None
    configs = list(dict.fromkeys(values.config))
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(max(4.0, 0.7 * len(configs) + 2.0), 3.2), layout="constrained")
        ax = fig.subplots()
        sns.boxplot(data=values, x="config", y="value", hue="saliency_method", order=configs,
                    ax=ax, fliersize=1.5, linewidth=0.8)
        ax.set_xlabel("")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelrotation=30)
        return to_svg(fig)


def cd_diagram(result: stats.CDResult) -> str | None:
    """The critical-difference diagram of bench.stats.plot_cd."""
    if result.n_blocks == 0 or result.k < 2:
        return None
    with matplotlib.rc_context(RC | {"axes.grid": False}):
        fig = Figure(figsize=(6.4, 1.2 + 0.2 * (result.k + 1)), layout="constrained")
        stats.plot_cd(result, fig.subplots())
        return to_svg(fig)
