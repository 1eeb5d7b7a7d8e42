"""The report as one self-contained HTML page: inline CSS, figures embedded as base64 PNG."""

from __future__ import annotations

import base64
from html import escape

from rayot.report.cells import column_groups, render_cell
from rayot.report.model import Report, ReportTable

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; margin: 1.4rem 0 .4rem; }
.rule { background: #f5f7fa; border-left: 4px solid #4a7bd0; padding: .6rem .9rem; font-size: .92rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .86rem; font-variant-numeric: tabular-nums; }
th, td { padding: .25rem .6rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead tr:last-child th { border-bottom: 1.5px solid #333; }
table { border-top: 2px solid #333; border-bottom: 2px solid #333; }
tr.sep td { border-top: 1px solid #999; }
th.group { text-align: center; border-bottom: 1px solid #999; }
td.best b { color: #0b5394; }
.std { color: #777; font-size: .8em; }
.flag { color: #b35900; font-size: .8em; }
ul.notes { font-size: .82rem; color: #555; margin-top: .3rem; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
nav ul { columns: 2; font-size: .88rem; }
"""


def table_html(table: ReportTable) -> str:
    """A ``<table>`` with a spanner row when columns are grouped."""
    out = [f'<h3 id="{escape(table.key)}">{escape(table.title)}</h3>', '<div class="scroll"><table>', "<thead>"]
    groups = column_groups([c.group for c in table.columns])
    if any(g for g, _ in groups):
        cells = ["<th></th>"] + [
            f'<th class="group" colspan="{w}">{escape(g)}</th>' if g else f'<th colspan="{w}"></th>'
            for g, w in groups
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append(
        "<tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in [table.row_header, *[c.label for c in table.columns]])
        + "</tr>"
    )
    out.append("</thead><tbody>")
    for row in table.rows:
        tds = []
        for c in row.cells:
            text = render_cell(
                c,
                table.show_std,
                bold=lambda s: f"<b>{s}</b>",
                std=lambda s: f' <span class="std">± {s}</span>',
                flag=lambda s: f' <span class="flag">({s})</span>',
                escape=escape,
            )
            tds.append(f'<td class="best">{text}</td>' if c.best else f"<td>{text}</td>")
        cls = ' class="sep"' if row.rule_before else ""
        label = f"<b>{escape(row.label)}</b>" if row.label == "Average" else escape(row.label)
        out.append(f"<tr{cls}><td>{label}</td>{''.join(tds)}</tr>")
    out.append("</tbody></table></div>")
    if table.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(out)


def to_html(report: Report) -> str:
    """The whole page; it loads nothing from anywhere."""
    body = [f"<h1>{escape(report.title)}</h1>", f'<p class="rule"><b>Aggregation.</b> {escape(report.rule)}</p>']
    body.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    toc = [f'<li><a href="#{escape(t.key)}">{escape(t.title)}</a></li>' for t in report.tables]
    if report.figures:
        toc.append('<li><a href="#figures">Figures</a></li>')
    body.append("<nav><ul>" + "".join(toc) + "</ul></nav>")
    section = None
    for table in report.tables:
        if table.section != section:
            section = table.section
            body.append(f"<h2>{escape(section)}</h2>")
        body.append(table_html(table))
    if report.figures or report.skipped_figures:
        body.append('<h2 id="figures">Figures</h2>')
        for fig in report.figures:
            data = base64.b64encode(fig.png).decode("ascii")
            body.append(
                f'<figure><img alt="{escape(fig.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(fig.title)}</figcaption></figure>"
            )
        if report.skipped_figures:
            body.append(
                '<ul class="notes">'
                + "".join(f"<li>Skipped: {escape(s)}</li>" for s in report.skipped_figures)
                + "</ul>"
            )
    body.append("<h2>Failed trials</h2>")
    if report.failed.empty:
        body.append("<p>None.</p>")
    else:
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(str(x if x is not None else ''))}</td>" for x in r) + "</tr>"
            for r in report.failed[["trial_id", "method", "protocol", "dataset", "seed", "error"]].itertuples(index=False)
        )
        body.append(
            '<div class="scroll"><table><thead><tr><th>trial_id</th><th>method</th><th>protocol</th>'
            f"<th>dataset</th><th>seed</th><th>error</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(report.title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
