"""`rayot report`: the tables and figures of a paper, from results Parquet."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

log = logging.getLogger(__name__)


def report(
    results: list[str] = typer.Option(
        ["results"], "--results", "-r", help="Results folder or URI (s3://, gs://); repeatable."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder. Default: reports/<name>."
    ),
    name: str = typer.Option("latest", "--name", help="Report name, used when --out is not given."),
    formats: list[str] = typer.Option(
        ["md,latex,html,csv"], "--format", "-f", help="Comma-separated: md, latex, html, csv."
    ),
    published: bool = typer.Option(
        False, "--published",
        help="Show the published 11-dataset averages, and the differences to them where the measured "
        "averages are over those 11 datasets.",
    ),
    methods: list[str] = typer.Option(
        None, "--methods", "-m",
        help="Keep these methods (repeatable or comma-separated); fix settings with "
        "METHOD:key=value[,key=value], a method's variants by their settings.",
    ),
    datasets: list[str] = typer.Option(
        None, "--datasets", "-d", help="Keep these evaluated datasets (repeatable or comma-separated)."
    ),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip drawing the figures."),
) -> None:
    """Aggregate finished trials into tables (Markdown, LaTeX, HTML, CSV) and figures (PNG)."""
    from rayot.report import build_report, parse_formats, print_report, write_report
    from rayot.report.frame import split_method_specs
    from rayot.results import read_results, read_search_records

    wanted = parse_formats(formats)  # fail on a bad format before reading anything
    dataset_list = [d.strip() for item in datasets or [] for d in item.split(",") if d.strip()]
    method_list = split_method_specs(methods or [])
    out_dir = out if out is not None else Path("reports") / name
    table = read_results(results)
    rep = build_report(
        table,
        searches=read_search_records(results),
        methods=method_list or None,
        datasets=dataset_list or None,
        published=published,
        figures=not no_figures,
        sources=results,
        title=f"rayot report: {out_dir.name}",
    )
    console = Console()
    print_report(rep, console)
    paths = write_report(rep, out_dir, wanted)
    for note in rep.skipped_figures:
        log.info("figure skipped: %s", note)
    console.print(f"wrote {len(paths)} files to [bold]{out_dir}[/] ({', '.join(wanted)})")
