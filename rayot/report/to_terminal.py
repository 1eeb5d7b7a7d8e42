"""Rich tables for the terminal (``rayot report`` and the end of a sweep)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rayot import terminal
from rayot.report.cells import render_cell
from rayot.report.model import Report, ReportTable


def rich_table(table: ReportTable) -> Table:
    """A Rich table: numbers right-aligned, the best bold, incomplete values flagged in yellow."""
    # wide enough that the title stays on one line when the terminal allows
    out = Table(
        title=escape(table.title), title_style="bold", header_style="bold", min_width=len(table.title) + 4
    )
    out.add_column(escape(table.row_header), justify="left")
    for col in table.columns:
        out.add_column(escape(col.label), justify="right")
    for row in table.rows:
        cells = [
            render_cell(
                c,
                table.show_std,
                bold=lambda s: f"[bold green]{s}[/]",
                std=lambda s: f" [dim]± {s}[/]",
                flag=lambda s: f" [yellow]({s})[/]",
                escape=escape,
            )
            for c in row.cells
        ]
        if row.rule_before and out.row_count:
            out.add_section()
        out.add_row(escape(row.label), *cells)
    return out


def print_table(table: ReportTable, console: Console) -> None:
    """The table as drawn where it fits the console, else one block per row (rayot.terminal)."""
    terminal.print_table(console, rich_table(table))
    for note in table.notes:
        console.print(f"[dim]• {escape(note)}[/]", soft_wrap=True)


def print_report(report: Report, console: Console | None = None) -> None:
    """The main table, then the published comparison and the searches' table when the report has
    them."""
    console = console or Console()
    if report.main is not None:
        print_table(report.main, console)
    for table in report.tables:
        if table.key == "published":
            print_table(table, console)
    for table in report.tables:
        if table.key == "searches" and table is not report.main:
            print_table(table, console)
    if not report.failed.empty:
        console.print(f"[red]{len(report.failed)} failed trials[/] (listed in the report)")
