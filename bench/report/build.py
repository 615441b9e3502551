"""The report's context (every number and figure it shows), built from the store alone."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.report import (
    answers,
    clinical,
    headline,
    plots,
    provenance,
    robustness,
    saliency,
    significance,
    tables,
)
from bench.report.data import BLOCK, ReportData, load
from bench.store import ResultsStore


def draw_figures(data: ReportData, main: tables.Table, sal: dict[str, Any],
                 tests: list[significance.BlockTests],
                 draw: Callable[[Figure], Any] = plots.to_svg) -> dict[str, Any]:
    """Every figure of the report, each passed through ``draw`` (inline SVG; None stays None)."""
    def out(fig: Figure | None) -> Any:
        return None if fig is None else draw(fig)

    by_block = dict(iter(data.ok.groupby(BLOCK, sort=True))) if len(data.ok) else {}
    by_name = {t.name: t for t in tests}
    blocks = []
    for b in main.blocks:
        cells = by_block.get((b.dataset, b.backbone), data.ok.iloc[:0])
        block_tests = by_name.get(b.name)
        blocks.append({
            "name": b.name,
            "tradeoff": out(plots.tradeoff(b, cells, data.measured, data.devices)),
            "bits": out(plots.bits_accuracy(b)),
            "latency": out(plots.latency_spread(cells, data.measured)),
            "pvalues": out(plots.pvalue_heatmap(block_tests)) if block_tests else None})
    distributions = [{"name": f"{dataset} / {backbone}",
                      "svg": out(plots.saliency_distribution(part, sal["metric"]))}
                     for (dataset, backbone), part in sal["samples"].groupby(BLOCK, sort=True)]
    cd = {t.name: out(plots.cd_diagram(t.cd)) for t in tests if t.cd is not None}
    return {"blocks": blocks, "saliency": distributions, "cd": cd}


def _saliency(data: ReportData) -> dict[str, Any]:
    """Stability table, and per-image values of the main statistic for the distributions."""
    frame = saliency.cell_stats(data)
    present = set(frame.metric)
    main = (significance.main_saliency(data.ok) or "").removeprefix("saliency_")
    metric = main if main in present else next(
        (m for m in saliency.METRIC_LABELS if m in present), None)
    return {"table": saliency.stability_table(frame, saliency.sanity_checks(data)),
            "metric": metric, "subsets": saliency.subset_notes(data),
            "samples": saliency.samples(frame, metric) if metric else frame.iloc[:0]}


@dataclass(frozen=True)
class ReportOptions:
    """What a reader may choose: the recall margin (points) beyond which a class is flagged,
    the configuration whose confusion matrices are shown (None: the documented rule in
    bench.report.clinical) and the table of the one-table formats."""

    recall_margin: float = clinical.MARGIN_POINTS
    confusion: str | None = None
    table: str | None = None
    """The table md, csv and latex write ("headline" or "main"; None: the format's default)."""
    test_images: bool = True
    """Whether thumbnails of test images (patients' images, on real data) may be shown: the
    results server's report shows them only with --private-reads."""


def _clinical(blocks: list[clinical.ClinicalBlock], figures: bool) -> list[dict[str, Any]]:
    """Each block with its heatmap (seaborn is imported only when figures are drawn)."""
    if not figures:
        return [{"block": b, "heatmap": None} for b in blocks]
    from bench.report.clinical_plots import per_class_heatmap

    return [{"block": b, "heatmap": per_class_heatmap(b.heatmap_frame())} for b in blocks]


def _robustness(data: ReportData, figures: bool) -> list[dict[str, Any]]:
    """Each block of the robustness view with its small multiples (drawn only with figures)."""
    return [{"block": b, "panels": plots.to_svg(robustness.severity_panels(b)) if figures
             else None} for b in robustness.robustness_view(data)]


def context(data: ReportData, figures: bool = True,
            options: ReportOptions | None = None) -> dict[str, Any]:
    """Everything the renderers show; ``figures=False`` skips plots and the gallery."""
    options = options or ReportOptions()
    per_class = clinical.clinical_view(data, options.recall_margin, options.confusion)
    main = tables.main_table(data, clinical.macro_f1_by_cell(per_class))
    tests = significance.block_tests(data)
    sal = _saliency(data)
    return {
        "headline": headline.headline_table(data, tests, per_class),
        "clinical": _clinical(per_class, figures),
        "robustness": _robustness(data, figures),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "store": str(data.root),
        "n_records": len(data.records),
        "summary": provenance.summary(data),
        "flagged": provenance.flagged(data),
        "main": main,
        "devices": data.devices,
        "device_table": tables.device_table(data),
        "comparison": tables.comparison_table(data),
        "compared": data.compared,
        "answers": data.answers,
        "verified": answers.verification(data.answers),
        "saliency": sal,
        "saliency_main": significance.main_saliency(data.ok),
        "significance": tests,
        "seed_level": significance.SEED_LEVEL,
        "image_level": significance.IMAGE_LEVEL,
        "rows": data.cells.to_dict("records"),
        "figures": draw_figures(data, main, sal, tests) if figures else None,
        "gallery": saliency.gallery(data) if figures else [],
    }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No automatic garbage collection in the block: reading the store allocates the records
    the report keeps, which each collection would otherwise rescan."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Keep the objects alive so far out of garbage collection for the block: statsmodels' Holm
    correction calls gc.collect() on every call, which otherwise rescans every loaded record."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _load(store: ResultsStore, test_images: bool = True) -> ReportData:
    with _gc_paused():
        return load(store, test_images)


def report_context(store: ResultsStore, figures: bool = True,
                   options: ReportOptions | None = None) -> dict[str, Any]:
    """Read the store once and build the context."""
    data = _load(store)
    with _gc_frozen():
        return context(data, figures, options)


def write_atomic(out: Path, text: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)
    return out


def build_report(store: ResultsStore, out: Path, format: str = "html",
                 options: ReportOptions | None = None) -> Path:
    """Write the report of ``store`` to ``out`` in ``format`` (see render.FORMATS)."""
    from bench.report.render import FORMATS

    render = FORMATS[format]
    data = _load(store, options.test_images if options else True)
    with _gc_frozen():   # rendering too: the records stay frozen while the template runs
        shown = context(data, figures=format == "html", options=options)
        shown["export_table"] = options.table if options else None
        text = render(shown)
    return write_atomic(out, text)
