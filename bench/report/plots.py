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
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from bench import stats
from bench.report import fmt
from bench.report.data import FLOAT_BITS, METHOD_ORDER, bits_label, ordered_configs
from bench.report.tables import Block

RC = {"svg.fonttype": "none", "svg.hashsalt": "medq-bench", "font.size": 8,
      "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
      "axes.grid": True, "grid.alpha": 0.3}
LAYOUT = "constrained"
MARKERS = "os^DvP*Xph"
PALETTE = matplotlib.colormaps["tab10"].colors
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def to_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element: no XML prolog, metadata or namespace URIs (HTML
    gives inline SVG its namespace), `href` instead of `xlink:href`."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    svg = _METADATA.sub("", _PROLOG.sub("", buffer.getvalue(), count=1), count=1)
    return _XMLNS.sub("", svg).replace("xlink:href=", "href=")


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
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(known)}


def _markers(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    bits = sorted({(r["w_bits"], r["a_bits"]) for r in rows}, reverse=True)
    return {bits_label(w, a): MARKERS[i % len(MARKERS)] for i, (w, a) in enumerate(bits)}


def _scatter(ax: Any, rows: list[dict[str, Any]], xkey: str, xlabel: str, log: bool) -> None:
    colors, markers = _colors([r["method"] for r in rows]), _markers(rows)
    pts = [r for r in rows if not fmt.missing(r.get(xkey)) and not fmt.missing(r["accuracy"])]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in pts:
        groups.setdefault((r["method"], bits_label(r["w_bits"], r["a_bits"])), []).append(r)
    for (method, bits), mine in groups.items():
        ax.scatter([r[xkey] for r in mine], [r["accuracy"] for r in mine], s=30,
                   marker=markers[bits], color=colors[method], zorder=2)
    front = [pts[i] for i in pareto_front([r[xkey] for r in pts], [r["accuracy"] for r in pts])]
    ax.step([r[xkey] for r in front], [r["accuracy"] for r in front], where="post",
            color="black", lw=1, ls="--", zorder=1)
    for r in front:
        ax.annotate(r["config"], (r[xkey], r["accuracy"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=7)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (mean over seeds)")


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
        fig = Figure(figsize=(3.4 * len(panels) + 1.4, 3.2), layout=LAYOUT)
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
        fig = Figure(figsize=(5.8, 3.2), layout=LAYOUT)
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
    configs = ordered_configs(values)
    methods = list(dict.fromkeys(values.saliency_method))
    width = 0.8 / len(methods)
    palette = [PALETTE[i % len(PALETTE)] for i in range(len(methods))]
    groups = dict(iter(values.groupby(["config", "saliency_method"])))
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(max(4.0, 0.7 * len(configs) + 2.0), 3.2), layout=LAYOUT)
        ax = fig.subplots()
        for m, (method, color) in enumerate(zip(methods, palette, strict=True)):
            present = [(i, groups[(c, method)].value.to_numpy()) for i, c in enumerate(configs)
                       if (c, method) in groups]
            if not present:
                continue
            ax.boxplot([v for _, v in present],
                       positions=[i - 0.4 + width * (m + 0.5) for i, _ in present],
                       widths=width * 0.9, patch_artist=True, manage_ticks=False,
                       boxprops={"facecolor": color, "linewidth": 0.8},
                       medianprops={"color": "black", "linewidth": 0.8},
                       flierprops={"markersize": 1.5}, whiskerprops={"linewidth": 0.8},
                       capprops={"linewidth": 0.8})
        ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(configs) - 0.4)
        ax.set_ylabel(label)
        ax.legend(handles=[Patch(facecolor=c, label=m) for m, c in zip(methods, palette,
                                                                      strict=True)],
                  fontsize=7, frameon=False, loc="best")
        return to_svg(fig)


def cd_diagram(result: stats.CDResult) -> str | None:
    """The critical-difference diagram of bench.stats.plot_cd."""
    if result.n_blocks == 0 or result.k < 2:
        return None
    with matplotlib.rc_context(RC | {"axes.grid": False}):
        fig = Figure(figsize=(6.4, 1.2 + 0.2 * (result.k + 1)), layout=LAYOUT)
        stats.plot_cd(result, fig.subplots())
        return to_svg(fig)
