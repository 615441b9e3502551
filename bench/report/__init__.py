"""The report: reads only the results store (bench.store) and bench.stats."""

from bench.report.build import build_report, report_context

__all__ = ["build_report", "report_context"]
