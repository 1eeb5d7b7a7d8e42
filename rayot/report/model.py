"""The format-neutral report: tables of cells, figures as PNG bytes, notes.

Every output format (terminal, Markdown, LaTeX, HTML, CSV) renders the same :class:`Report`, so
the numbers, marks and notes cannot drift between formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Cell:
    """One value of a table (percent), or a text cell when ``text`` is set.

    ``flag`` marks an incomplete value ("2/3 seeds", "9/11 datasets"); ``comparable`` is False
    for values that must not win "best" (an average over fewer datasets than the others);
    ``signed`` values are differences, shown with their sign.
    """

    value: float | None = None
    std: float | None = None
    n: int | None = None
    flag: str | None = None
    best: bool = False
    comparable: bool = True
    signed: bool = False
    text: str | None = None


@dataclass(frozen=True)
class Column:
    """A value column; ``group`` is the spanner above it (a dataset), ``best`` marks its maximum."""

    key: str
    label: str
    group: str | None = None
    best: bool = False


@dataclass
class Row:
    """A table row: its label, one cell per column, and identifying fields for the tidy CSV."""

    label: str
    cells: list[Cell]
    meta: dict[str, str] = field(default_factory=dict)
    rule_before: bool = False


@dataclass
class ReportTable:
    """One table of the report; ``key`` is its file stem (CSV) and anchor (HTML)."""

    key: str
    section: str
    title: str
    row_header: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    show_std: bool = False

    def mark_best(self) -> None:
        """Bold the largest comparable value of every ``best`` column (ties all win)."""
        for j, col in enumerate(self.columns):
            if not col.best:
                continue
            values = [
                r.cells[j].value
                for r in self.rows
                if r.cells[j].value is not None and r.cells[j].comparable and r.cells[j].text is None
            ]
            if not values:
                continue
            top = round(max(values), 2)  # ties at the shown precision are ties
            for r in self.rows:
                c = r.cells[j]
                c.best = c.value is not None and c.comparable and round(c.value, 2) == top

    def tidy(self) -> pd.DataFrame:
        """One line per (row, column): the long form the CSV files hold.

        ``row`` is the label as shown; the row's identifying fields (variant, method, dataset,
        settings) follow as their own columns, the values at full precision.
        """
        records = []
        for r in self.rows:
            for col, c in zip(self.columns, r.cells, strict=True):
                records.append(
                    {
                        "table": self.key,
                        "row": r.label,
                        **r.meta,
                        "group": col.group or "",
                        "column": col.label,
                        "value": c.value,
                        "text": c.text,
                        "std": c.std,
                        "n_seeds": c.n,
                        "flag": c.flag,
                        "best": c.best,
                    }
                )
        frame = pd.DataFrame.from_records(records)
        if not frame.empty:
            frame["n_seeds"] = frame["n_seeds"].astype("Int64")
        return frame


@dataclass(frozen=True)
class Figure:
    """A rendered figure: file stem, caption, PNG bytes."""

    key: str
    title: str
    png: bytes


@dataclass
class Report:
    """Everything a report shows; ``main`` is the table printed in the terminal."""

    title: str
    rule: str
    tables: list[ReportTable]
    main: ReportTable | None
    figures: list[Figure]
    skipped_figures: list[str]
    notes: list[str]
    failed: pd.DataFrame
    sources: list[str]
    n_trials: int
