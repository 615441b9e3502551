"""The HTML report: reads only the results store."""

from bench.report.build import build_report, report_context

__all__ = ["build_report", "report_context"]
