"""The report as Markdown (GitHub flavour): pipe tables, bold best values, linked figures."""

from __future__ import annotations

from rayot.report.cells import render_cell
from rayot.report.model import Report, ReportTable


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: ReportTable) -> str:
    """One table: a pipe table with the row header left-aligned and numbers right-aligned."""
    header = [table.row_header] + [c.label for c in table.columns]
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for row in table.rows:
        cells = [
            render_cell(c, table.show_std, bold=lambda s: f"**{s}**", escape=_escape)
            for c in row.cells
        ]
        label = f"**{_escape(row.label)}**" if row.label == "Average" else _escape(row.label)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    out = "\n".join(lines)
    if table.notes:
        out += "\n\n" + "\n".join(f"- {_escape(n)}" for n in table.notes)
    return out


def to_markdown(report: Report, figure_dir: str = "figures") -> str:
    """The whole report; figures are linked as ``figure_dir/<key>.png``."""
    parts = [f"# {report.title}", "", f"**Aggregation.** {report.rule}", ""]
    parts += [f"- {n}" for n in report.notes]
    section = None
    for table in report.tables:
        if table.section != section:
            section = table.section
            parts += ["", f"## {section}"]
        parts += ["", f"### {table.title}", "", table_markdown(table)]
    if report.figures or report.skipped_figures:
        parts += ["", "## Figures"]
        for fig in report.figures:
            parts += ["", f"![{fig.title}]({figure_dir}/{fig.key}.png)"]
        if report.skipped_figures:
            parts += [""] + [f"- Skipped: {s}" for s in report.skipped_figures]
    parts += ["", "## Failed trials", ""]
    if report.failed.empty:
        parts.append("None.")
    else:
        parts += ["| trial_id | method | protocol | dataset | seed | error |", "|---|---|---|---|---:|---|"]
        for r in report.failed.itertuples(index=False):
            parts.append(
                f"| {r.trial_id} | {r.method} | {r.protocol} | {r.dataset} | {r.seed} | "
                f"{_escape(str(r.error or ''))} |"
            )
    return "\n".join(parts) + "\n"
