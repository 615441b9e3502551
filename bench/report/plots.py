"""The report's figures, drawn with seaborn on matplotlib and inlined as SVG (text kept as text,
no external fonts): accuracy vs size and vs latency per device with per-seed points, 95% CI bars
and the Pareto front; accuracy against bit-width; per-device latency with the spread of its
samples; Holm-adjusted p-values as a heatmap; per-image saliency distributions (box with
points); critical-difference diagrams.

Every function returns a matplotlib Figure, or None when its data is missing (the template then
says so in words); ``to_svg`` turns a figure into inline SVG. No figure places free text next
to data points: configurations are told apart by colour (method) and marker (bit-width) with a
legend outside the axes, and category labels sit on a horizontal-text axis, so no two labels
can be drawn over each other (tests/test_report_figures.py checks every figure's text boxes).
Dense point clouds are subsampled to ``MAX_POINTS`` per box and rasterised, which keeps an
84-cell report's SVG small.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from bench import stats
from bench.config import FP32_BITS
from bench.report import fmt
from bench.report.data import METHOD_ORDER, bits_label, ordered_configs
from bench.report.tables import Block

RC = {"svg.fonttype": "none", "svg.hashsalt": "medq-bench", "font.size": 8,
      "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
      "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 7, "legend.frameon": False}
LAYOUT = "constrained"
MARKERS = "os^DvP*Xph"
PALETTE = sns.color_palette("tab10")
LEGEND_ROWS = 24
"""Legend entries per column at most; more entries (many devices) add columns."""
MAX_DEVICE_PANELS = 6
"""Trade-off panels, one per device, up to this many devices; beyond, one panel of the median
over the devices with their range (each device's values are in the devices table and figure)."""
ACROSS = "p50@*"
"""The trade-off key of that panel."""
BOX_IN = 0.07
"""Height per box of the horizontal box plots, inches: one config row holds one box per hue."""
MAX_POINTS = 120
"""Per-sample points drawn per box at most (a fixed-seed subsample; the box uses them all)."""
RASTER_DPI = 110
ROW_IN = 0.26
"""Height per category row of the horizontal box plots, inches (8 pt labels need ~0.15)."""
P_FLOOR = 1e-4
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def _lay_out(fig: Figure) -> None:
    """Run the figure's layout engine once, as savefig would with the SVG renderer, and switch
    the engine off: savefig then draws the figure once instead of twice (with a layout engine
    it first draws the whole figure with rendering disabled only to run the layout)."""
    engine = fig.get_layout_engine()
    if engine is None:
        return
    FigureCanvasSVG(fig)
    fig.dpi = RASTER_DPI
    engine.execute(fig)
    fig.set_layout_engine(None)


def to_svg(fig: Figure) -> str:
    """The figure as an inline <svg> element: no XML prolog, metadata or namespace URIs (HTML
    gives inline SVG its namespace), `href` instead of `xlink:href`."""
    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        _lay_out(fig)
        fig.savefig(buffer, format="svg", dpi=RASTER_DPI,
                    metadata={"Date": None, "Creator": None})
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


def styles(n: int) -> list[tuple[Any, str]]:
    """``n`` distinct (colour, marker) pairs: tab10's colours with circles up to 10; beyond,
    evenly spaced hues (husl; 10, or ``ceil(n / len(MARKERS))`` past 100) crossed with the
    markers, circles first, so no two of 50 or more devices look alike."""
    if n <= len(PALETTE):
        return [(PALETTE[i], "o") for i in range(n)]
    colours = sns.color_palette("husl", max(len(PALETTE), math.ceil(n / len(MARKERS))))
    return [(c, m) for m in MARKERS for c in colours][:n]


def _legend_columns(n: int) -> int:
    return max(1, math.ceil(n / LEGEND_ROWS))


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    known = sorted(set(methods), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER
                                                else len(METHOD_ORDER), m))
    return {m: colour for m, (colour, _) in zip(known, styles(len(known)), strict=True)}


def _markers(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    bits = sorted({(r["w_bits"], r["a_bits"]) for r in rows}, reverse=True)
    return {bits_label(w, a): MARKERS[i % len(MARKERS)] for i, (w, a) in enumerate(bits)}


def _log_x(ax: Any) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _thin(frame: pd.DataFrame, keys: list[str], n: int = MAX_POINTS) -> pd.DataFrame:
    """At most ``n`` rows per group of ``keys`` (a fixed-seed sample), for the drawn points."""
    return frame.sample(frac=1.0, random_state=0).groupby(keys, sort=False).head(n)


def _category_height(n_rows: int, n_hues: int = 1) -> float:
    return max(2.2, 0.9 + max(ROW_IN, BOX_IN * n_hues / 0.8) * n_rows)


# --- trade-offs ---------------------------------------------------------------------------


def _seed_points(cells: pd.DataFrame, measured: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per-seed (x, accuracy) of a block's cells: x is the packed size, the p50 latency on a
    device (``p50@device``) or the median of the cell's p50 over the devices (``ACROSS``)."""
    if key == ACROSS:
        median = measured.groupby("cell_id", as_index=False).latency_ms_p50.median()
        frame = cells.merge(median, on="cell_id").rename(columns={"latency_ms_p50": "x"})
    elif key.startswith("p50@"):
        on = measured[measured.device == key.removeprefix("p50@")]
        frame = cells.merge(on[["cell_id", "latency_ms_p50"]], on="cell_id")
        frame = frame.rename(columns={"latency_ms_p50": "x"})
    else:
        frame = cells.assign(x=cells.get(key))
    frame = frame.assign(bits=[bits_label(w, a) for w, a in
                               zip(frame.w_bits, frame.a_bits, strict=True)])
    return frame.dropna(subset=["x", "accuracy"])


def _tradeoff_panel(ax: Any, rows: list[dict[str, Any]], seeds: pd.DataFrame, key: str,
                    xlabel: str, colors: dict[str, Any], markers: dict[str, str]) -> None:
    for (method, bits), mine in seeds.groupby(["method", "bits"], sort=False):
        ax.scatter(mine.x, mine.accuracy, s=14, alpha=0.35, linewidths=0, marker=markers[bits],
                   color=colors[method], rasterized=True, zorder=2)
    means = [r for r in rows if not fmt.missing(r.get(key)) and not fmt.missing(r["accuracy"])]
    bars = [r for r in means if not fmt.missing(r.get("accuracy_low"))]
    spread = [r for r in means if not fmt.missing(r.get(f"{key}_low"))]
    ax.hlines([r["accuracy"] for r in spread], [r[f"{key}_low"] for r in spread],
              [r[f"{key}_high"] for r in spread], colors=[colors[r["method"]] for r in spread],
              lw=1, zorder=3)
    ax.vlines([r[key] for r in bars], [r["accuracy_low"] for r in bars],
              [r["accuracy_high"] for r in bars], colors=[colors[r["method"]] for r in bars],
              lw=1, zorder=3)
    for bits, marker in markers.items():
        mine = [r for r in means if bits_label(r["w_bits"], r["a_bits"]) == bits]
        ax.scatter([r[key] for r in mine], [r["accuracy"] for r in mine], s=36, marker=marker,
                   c=[colors[r["method"]] for r in mine], edgecolors="white", linewidths=0.5,
                   zorder=3)
    front = [means[i] for i in pareto_front([r[key] for r in means],
                                            [r["accuracy"] for r in means])]
    ax.step([r[key] for r in front], [r["accuracy"] for r in front], where="post",
            color="black", lw=1, ls="--", zorder=1)
    ax.scatter([r[key] for r in front], [r["accuracy"] for r in front], s=110,
               facecolors="none", edgecolors="black", linewidths=0.8, zorder=4)
    _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")


def _tradeoff_legend(fig: Figure, colors: dict[str, Any], markers: dict[str, str]) -> None:
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="grey", marker=k, ls="", label=b)
                for b, k in markers.items()]
    handles += [Line2D([], [], color="grey", marker="o", ls="", alpha=0.35, ms=4,
                       label="one seed"),
                Line2D([], [], color="grey", marker="o", ls="-", label="mean, 95% CI"),
                Line2D([], [], color="black", marker="o", ms=9, mfc="none", ls="--",
                       label="Pareto front")]
    fig.legend(handles=handles, loc="outside right upper")


def _across(row: dict[str, Any], devices: Sequence[str]) -> dict[str, Any]:
    """``row`` with the median, fastest and slowest of its p50 over ``devices`` (``ACROSS``)."""
    values = [row[f"p50@{d}"] for d in devices if not fmt.missing(row.get(f"p50@{d}"))]
    if not values:
        return row
    return {**row, ACROSS: float(np.median(values)), f"{ACROSS}_low": min(values),
            f"{ACROSS}_high": max(values)}


def tradeoff(block: Block, cells: pd.DataFrame, measured: pd.DataFrame,
             devices: Sequence[str]) -> Figure | None:
    """Accuracy vs packed size and vs p50 latency on each device: one faint point per seed,
    the mean with its 95% CI bar per configuration, the Pareto front dashed and ringed. With
    more than ``MAX_DEVICE_PANELS`` devices, one latency panel: per configuration the median
    over the devices of their mean p50, a horizontal bar from the fastest to the slowest.
    ``cells``: the block's successful cells, ``measured``: the report's measurements."""
    panels = []
    rows = block.rows
    if any(not fmt.missing(r.get("packed_size_bytes")) for r in rows):
        panels.append(("packed_size_bytes", "packed model size (bytes, log)"))
    timed = [d for d in devices if any(not fmt.missing(r.get(f"p50@{d}")) for r in rows)]
    if len(timed) > MAX_DEVICE_PANELS:
        rows = [_across(r, timed) for r in rows]
        panels.append((ACROSS, f"p50 latency, median of {len(timed)} devices "
                               "(ms, log; bar: fastest to slowest)"))
        measured = measured[measured.device.isin(timed)]
    else:
        panels += [(f"p50@{d}", f"p50 latency on {d} (ms, log)") for d in timed]
    if not panels:
        return None
    colors, markers = _colors([r["method"] for r in rows]), _markers(rows)
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(3.5 * ncols + 1.5, 2.9 * nrows), layout=LAYOUT)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (key, label) in zip(axes, panels, strict=False):
            _tradeoff_panel(ax, rows, _seed_points(cells, measured, key), key, label, colors,
                            markers)
        for ax in axes[len(panels):]:
            fig.delaxes(ax)
        _tradeoff_legend(fig, colors, markers)
    return fig


def bits_accuracy(block: Block) -> Figure | None:
    """Accuracy (mean, 95% CI) against bit-width per quantised method; float methods as lines."""
    quant = [r for r in block.rows if r["w_bits"] != FP32_BITS and not fmt.missing(r["accuracy"])]
    if not quant:
        return None
    order = sorted({(r["w_bits"], r["a_bits"]) for r in quant}, reverse=True)
    position = {bits_label(w, a): i for i, (w, a) in enumerate(order)}
    colors = _colors([r["method"] for r in block.rows])
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(5.8, 3.0), layout=LAYOUT)
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
        for style, r in zip(("-", ":", "-.", "--"), (r for r in block.rows
                                                      if r["w_bits"] == FP32_BITS
                                                      and not fmt.missing(r["accuracy"])),
                            strict=False):
            ax.axhline(r["accuracy"], color=colors[r["method"]], ls=style, lw=1,
                       label=f"{r['config']} (float)")
            if not fmt.missing(r["accuracy_low"]):
                ax.axhspan(r["accuracy_low"], r["accuracy_high"], color=colors[r["method"]],
                           alpha=0.1, lw=0)
        ax.set_xticks(range(len(order)), [bits_label(w, a) for w, a in order])
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xlabel("bit-width (weights, activations)")
        ax.set_ylabel("accuracy (mean, 95% CI)")
        fig.legend(loc="outside right upper")
    return fig


# --- distributions ------------------------------------------------------------------------


def _strip(ax: Any, frame: pd.DataFrame, value: str, hue: str, order: list[str],
           hue_order: list[str], palette: dict[str, Any], markers: dict[str, str]) -> None:
    """Jittered points at seaborn's dodged box positions (what sns.stripplot(dodge=True)
    draws, at a fraction of its cost), one rasterised collection per ``hue``."""
    rows = {c: i for i, c in enumerate(order)}
    width = 0.8 / len(hue_order)
    rng = np.random.default_rng(0)
    for j, h in enumerate(hue_order):
        mine = frame[frame[hue] == h]
        centre = np.array([rows[c] for c in mine.config], dtype=float) - 0.4 + width * (j + 0.5)
        jitter = rng.uniform(-0.3 * width, 0.3 * width, len(mine))
        ax.scatter(mine[value], centre + jitter, s=3, alpha=0.45, linewidths=0,
                   color=palette[h], marker=markers[h], rasterized=True, zorder=3)


def _box_with_points(frame: pd.DataFrame, value: str, hue: str, order: list[str],
                     hue_order: list[str], xlabel: str, log: bool = False) -> Figure:
    """Horizontal boxes per configuration (rows) and ``hue``, with a thinned strip of points;
    each hue its own colour and marker (``styles``), however many there are."""
    pairs = styles(len(hue_order))
    palette = {h: c for h, (c, _) in zip(hue_order, pairs, strict=True)}
    markers = {h: m for h, (_, m) in zip(hue_order, pairs, strict=True)}
    ncol = _legend_columns(len(hue_order))
    fig = Figure(figsize=(6.4 + 1.3 * (ncol - 1),
                          max(_category_height(len(order), len(hue_order)),
                              0.9 + 0.16 * min(len(hue_order), LEGEND_ROWS))), layout=LAYOUT)
    ax = fig.subplots()
    sns.boxplot(data=frame, x=value, y="config", hue=hue, order=order, hue_order=hue_order,
                palette=palette, orient="h", showfliers=False, linewidth=0.7, fill=False,
                legend=False, ax=ax)
    _strip(ax, _thin(frame, ["config", hue]), value, hue, order, hue_order, palette, markers)
    if log:
        _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    ax.grid(axis="y", visible=False)
    fig.legend(handles=[Line2D([], [], color=palette[h], marker=markers[h], ls="-", label=h)
                        for h in hue_order], loc="outside right upper", ncols=ncol)
    return fig


def saliency_distribution(values: pd.DataFrame, label: str) -> Figure | None:
    """Per-image values of one saliency statistic (pooled over seeds) per configuration and
    saliency method: box (quartiles, whiskers at 1.5 IQR) over the points."""
    if values.empty:
        return None
    with matplotlib.rc_context(RC):
        return _box_with_points(values, "value", "saliency_method", ordered_configs(values),
                                list(dict.fromkeys(values.saliency_method)), label)


def latency_spread(cells: pd.DataFrame, measured: pd.DataFrame) -> Figure | None:
    """Per configuration and device, the spread of the latency samples (ms per batch, every
    timed batch of every seed; each seed's p50 where a measurement stored no samples)."""
    on = measured.merge(cells[["cell_id", "config", "method", "w_bits", "a_bits"]],
                        on="cell_id")
    if on.empty:
        return None
    samples = on.get("samples_s", pd.Series([[]] * len(on), index=on.index))
    values = [1000.0 * np.asarray(kept, dtype=float) if kept else
              np.array([np.nan if fmt.missing(p50) else p50], dtype=float)
              for kept, p50 in zip(samples, on.latency_ms_p50, strict=True)]
    counts = [len(v) for v in values]
    frame = pd.DataFrame({"config": np.repeat(on.config.to_numpy(dtype=object), counts),
                          "device": np.repeat(on.device.to_numpy(dtype=object), counts),
                          "latency_ms": np.concatenate(values)})
    frame = frame[np.isfinite(frame.latency_ms)].reset_index(drop=True)
    if frame.empty:
        return None
    devices = sorted(frame.device.unique())
    with matplotlib.rc_context(RC):
        if len(devices) > MAX_DEVICE_PANELS:
            return _across_devices(frame, ordered_configs(on), devices)
        return _box_with_points(frame, "latency_ms", "device", ordered_configs(on), devices,
                                "latency per batch (ms, log)", log=True)


def _across_devices(frame: pd.DataFrame, order: list[str], devices: list[str]) -> Figure:
    """Many devices: per configuration (rows) a box over the devices' median latencies and one
    point per device in its own colour and marker (``styles``), legend in columns."""
    pairs = dict(zip(devices, styles(len(devices)), strict=True))
    medians = frame.groupby(["config", "device"], as_index=False).latency_ms.median()
    ncol = _legend_columns(len(devices))
    fig = Figure(figsize=(6.4 + 1.3 * (ncol - 1),
                          max(_category_height(len(order)),
                              0.9 + 0.16 * min(len(devices), LEGEND_ROWS))), layout=LAYOUT)
    ax = fig.subplots()
    rows = {c: i for i, c in enumerate(order)}
    groups = [medians[medians.config == c].latency_ms.to_numpy() for c in order]
    ax.boxplot(groups, positions=range(len(order)), orientation="horizontal", widths=0.6,
               showfliers=False, medianprops={"color": "black"})
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(medians))
    for device, (colour, marker) in pairs.items():
        mine = medians.device.to_numpy() == device
        ax.scatter(medians.latency_ms[mine], [rows[c] + j for c, j in zip(
            medians.config[mine], jitter[mine], strict=True)], s=12, color=colour,
            marker=marker, linewidths=0, zorder=3)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    _log_x(ax)
    ax.set_xlabel(f"median latency per batch on each of {len(devices)} devices (ms, log)")
    ax.grid(axis="y", visible=False)
    fig.legend(handles=[Line2D([], [], color=c, marker=m, ls="", label=d)
                        for d, (c, m) in pairs.items()], loc="outside right upper", ncols=ncol)
    return fig


# --- significance -------------------------------------------------------------------------

P_COLUMNS = {("seeds", "accuracy"): "accuracy,\nover seeds", ("images", "accuracy"):
             "accuracy,\nper image", ("seeds", "saliency"): "saliency,\nover seeds",
             ("images", "saliency"): "saliency,\nper image"}


def holm_matrix(tests: Any) -> pd.DataFrame:
    """Holm-adjusted p per comparison (rows "A vs B", in the families' order) and test (columns
    of ``P_COLUMNS``) of one data set and backbone; NaN where not tested."""
    cells: dict[str, dict[str, float]] = {}
    kinds = [("seeds", f) for f in tests.families] + [("images", f) for f in
                                                        tests.image_families]
    for level, family in kinds:
        column = P_COLUMNS[(level, "accuracy" if family.metric == "accuracy" else "saliency")]
        for r in family.results:
            if not fmt.missing(r.p_adjusted):
                cells.setdefault(f"{r.name_a} vs {r.name_b}", {})[column] = float(r.p_adjusted)
    columns = [c for c in P_COLUMNS.values() if any(c in v for v in cells.values())]
    return pd.DataFrame.from_dict(cells, orient="index").reindex(columns=columns)


def pvalue_heatmap(tests: Any) -> Figure | None:
    """Holm-adjusted p-values of one data set and backbone: colour -log10(p), the value in the
    cell, blank where the test did not run."""
    matrix = holm_matrix(tests)
    if matrix.empty or matrix.notna().sum().sum() == 0:
        return None
    shown = -np.log10(matrix.clip(lower=P_FLOOR))
    notes = matrix.map(lambda p: "" if fmt.missing(p) else fmt.pval(p))
    with matplotlib.rc_context(RC | {"axes.grid": False}):
        fig = Figure(figsize=(1.0 * len(matrix.columns) + 3.4,
                              0.9 + 0.22 * len(matrix)), layout=LAYOUT)
        ax = fig.subplots()
        sns.heatmap(shown, annot=notes.to_numpy(), fmt="", cmap="rocket_r", vmin=0,
                    vmax=-math.log10(P_FLOOR), linewidths=0.5, linecolor="white",
                    annot_kws={"fontsize": 6.5}, ax=ax,
                    cbar_kws={"label": "-log10 p (Holm)", "shrink": 0.8})
        ax.collections[0].set_rasterized(True)
        ax.xaxis.tick_top()
        ax.tick_params(axis="x", rotation=0, length=0)
        ax.tick_params(axis="y", rotation=0, length=0)
        ax.set_xlabel("")
        ax.set_ylabel("")
    return fig


def cd_diagram(result: stats.CDResult) -> Figure | None:
    """The critical-difference diagram of bench.stats.plot_cd, wide enough for its labels."""
    if result.n_blocks == 0 or result.k < 2:
        return None
    longest = max((len(str(n)) for n in result.avg_ranks), default=8)
    with matplotlib.rc_context(RC | {"axes.grid": False}):
        fig = Figure(figsize=(max(6.4, 0.3 * (result.k + 2.6) + 0.14 * longest),
                              1.2 + 0.2 * (result.k + 1)), layout=LAYOUT)
        stats.plot_cd(result, fig.subplots())
    return fig
