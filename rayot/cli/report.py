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
    strict: bool = typer.Option(
        False, "--strict",
        help="Refuse a results file that cannot be read (truncated, not Parquet, not a result file) "
        "instead of leaving it out with a warning.",
    ),
) -> None:
    """Aggregate finished trials into tables (Markdown, LaTeX, HTML, CSV) and figures (PNG)."""
    from rayot.report import build_report, parse_formats, print_report, write_report
    from rayot.report.frame import split_method_specs
    from rayot.results import check_writable, read_readable_results
    from rayot.search_records import read_search_records

    wanted = parse_formats(formats)  # fail on a bad format before reading anything
    dataset_list = [d.strip() for item in datasets or [] for d in item.split(",") if d.strip()]
    method_list = split_method_specs(methods or [])
    out_dir = out if out is not None else Path("reports") / name
    check_writable(str(out_dir), "--out")  # a file, a folder under one, read-only: before any work
    table, unreadable = read_readable_results(results)
    for error in unreadable.values():
        if strict:
            raise error
        # one whole line per file on stderr, naming it; the report renders the rest
        Console(stderr=True).print(f"warning: {error}; left out of the report (--strict refuses it)",
                                   highlight=False, soft_wrap=True, markup=False)
    unsaved = _unsaved_prompts(table)
    if unsaved:  # one whole line on stderr, as rayot sweep's warnings: the report goes to stdout
        Console(stderr=True).print(f"warning: {unsaved}", highlight=False, soft_wrap=True, markup=False)
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


def _unsaved_prompts(table) -> str | None:
    """One line naming the ``done`` trials whose prompts are not saved where their configuration
    put them (rows of earlier versions: :func:`rayot.results.trials_without_prompts`); None when
    every one is. Only local checkpoint folders that exist are looked at: results copied here
    without their checkpoints are not judged."""
    import json
    import os

    from rayot.results import trials_without_prompts, without_prompts_line

    by_location: dict[str, list[str]] = {}
    for row in table.select(["trial_id", "status", "config"]).to_pylist():
        if row["status"] != "done":
            continue
        try:
            location = json.loads(row["config"])["output"]["checkpoints"]
        except (TypeError, ValueError, KeyError):
            continue
        if isinstance(location, str) and "://" not in location and os.path.isdir(location):
            by_location.setdefault(location, []).append(row["trial_id"])
    unsaved = {loc: trials_without_prompts(loc, ids) for loc, ids in sorted(by_location.items())}
    unsaved = {loc: ids for loc, ids in unsaved.items() if ids}
    if not unsaved:
        return None
    return without_prompts_line(", ".join(unsaved), [t for ids in unsaved.values() for t in ids],
                                "their rows are reported, their prompts are not there to load")
