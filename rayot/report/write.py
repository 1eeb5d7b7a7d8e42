"""Write a :class:`Report` to a folder in the requested formats."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from rayot.errors import RayotError
from rayot.report.model import Report
from rayot.report.to_html import to_html
from rayot.report.to_latex import to_latex
from rayot.report.to_markdown import to_markdown

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("md", "latex", "html", "csv")
_ALIASES = {"md": "md", "markdown": "md", "latex": "latex", "tex": "latex", "html": "html", "csv": "csv"}


def parse_formats(names: Iterable[str]) -> list[str]:
    """``["md,latex", "html"] -> ["md", "latex", "html"]``; an unknown name is an error."""
    out: list[str] = []
    for item in names:
        for name in filter(None, (n.strip().lower() for n in item.split(","))):
            if name not in _ALIASES:
                raise RayotError(f"report format {name!r} is unknown (choose from {', '.join(FORMATS)})")
            if _ALIASES[name] not in out:
                out.append(_ALIASES[name])
    if not out:
        raise RayotError(f"no report format given (choose from {', '.join(FORMATS)})")
    return out


def _clear(folder: Path, pattern: str) -> None:
    """Remove what an earlier report wrote here, so no stale table outlives its data."""
    for old in folder.glob(pattern):
        old.unlink()


def write_report(report: Report, out_dir: str | Path, formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write the figures (PNG) and every requested format; returns the paths written.

    Layout: ``figures/<key>.png``, ``report.md``, ``report.tex``, ``report.html`` (self-contained),
    ``csv/<table>.csv`` (tidy: one line per row and column) and ``csv/failed_trials.csv``.
    """
    wanted = parse_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = out / "figures"
    if figures.is_dir():
        _clear(figures, "*.png")
    if report.figures:
        figures.mkdir(exist_ok=True)
        for fig in report.figures:
            path = figures / f"{fig.key}.png"
            path.write_bytes(fig.png)
            written.append(path)
    documents = {"md": ("report.md", to_markdown), "latex": ("report.tex", to_latex),
                 "html": ("report.html", to_html)}
    for fmt, (name, render) in documents.items():
        if fmt in wanted:
            path = out / name
            path.write_text(render(report), encoding="utf-8")
            written.append(path)
    if "csv" in wanted:
        folder = out / "csv"
        folder.mkdir(exist_ok=True)
        _clear(folder, "*.csv")
        for table in report.tables:
            path = folder / f"{table.key}.csv"
            table.tidy().to_csv(path, index=False)
            written.append(path)
        if not report.failed.empty:
            path = folder / "failed_trials.csv"
            report.failed.to_csv(path, index=False)
            written.append(path)
    log.info("wrote %d report files to %s", len(written), out)
    return written
