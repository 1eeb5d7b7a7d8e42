"""`rayot report` as a library: results Parquet to the tables and figures of a paper.

    from rayot.results import read_results
    from rayot.report import build_report, write_report

    report = build_report(read_results(["results"]), published=True)
    write_report(report, "reports/latest", ["md", "html"])

Aggregation follows docs/protocol.md §5 (see :data:`rayot.report.build.RULE`). No Typer, no Ray.
"""

from __future__ import annotations

from rayot.metrics import harmonic_mean
from rayot.report.build import RULE, build_report
from rayot.report.model import Cell, Column, Figure, Report, ReportTable, Row
from rayot.report.to_terminal import print_report, rich_table
from rayot.report.write import FORMATS, parse_formats, write_report

__all__ = [
    "FORMATS",
    "RULE",
    "Cell",
    "Column",
    "Figure",
    "Report",
    "ReportTable",
    "Row",
    "build_report",
    "harmonic_mean",
    "parse_formats",
    "print_report",
    "rich_table",
    "write_report",
]
