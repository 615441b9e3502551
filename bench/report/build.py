"""The report's context (every number and figure it shows), built from the store alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import plots, provenance, saliency, significance, tables
from bench.report.data import ReportData, load
from bench.store import ResultsStore


def _figures(data: ReportData, main: tables.Table, sal: dict[str, Any],
             tests: list[significance.BlockTests]) -> dict[str, Any]:
    blocks = [{"name": b.name, "tradeoff": plots.tradeoff(b, data.devices),
               "bits": plots.bits_accuracy(b)} for b in main.blocks]
    samples = sal["samples"]
    distributions = [{"name": name, "svg": plots.saliency_distribution(part, sal["metric"])}
                     for name, part in (samples.assign(
                         name=samples.dataset + " / " + samples.backbone).groupby(
                         "name", sort=True) if len(samples) else [])]
    cd = {t.name: plots.cd_diagram(t.cd) for t in tests if t.cd is not None}
    return {"blocks": blocks, "saliency": distributions, "cd": cd}


def _saliency(data: ReportData) -> dict[str, Any]:
    frame = saliency.cell_stats(data)
    metric = next((m for m in saliency.METRIC_LABELS if m in set(frame.metric)), None)
    main = significance.main_saliency(data.ok)
    if main is not None and main.removeprefix("saliency_") in set(frame.metric):
        metric = main.removeprefix("saliency_")
    return {"table": saliency.stability_table(frame), "metric": metric,
            "samples": saliency.samples(frame, metric) if metric else frame.iloc[:0]}


def context(data: ReportData, figures: bool = True) -> dict[str, Any]:
    """Everything the renderers show; ``figures=False`` skips plots and the gallery."""
    main = tables.main_table(data)
    tests = significance.block_tests(data)
    sal = _saliency(data)
    out: dict[str, Any] = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "store": str(data.root),
        "n_records": len(data.records),
        "summary": provenance.summary(data),
        "flagged": provenance.flagged(data),
        "main": main,
        "devices": data.devices,
        "device_table": tables.device_table(data),
        "saliency": sal,
        "saliency_main": significance.main_saliency(data.ok),
        "significance": tests,
        "rows": data.cells.to_dict("records"),
        "figures": _figures(data, main, sal, tests) if figures else None,
        "gallery": saliency.gallery(data) if figures else [],
    }
    return out


def report_context(store: ResultsStore, figures: bool = True) -> dict[str, Any]:
    """Read the store once and build the context."""
    return context(load(store), figures)


def write_atomic(out: Path, text: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)
    return out


def build_report(store: ResultsStore, out: Path, format: str = "html") -> Path:
    """Write the report of ``store`` to ``out`` in ``format`` (see render.FORMATS)."""
    from bench.report.render import FORMATS

    render = FORMATS[format]
    return write_atomic(out, render(report_context(store, figures=format == "html")))
