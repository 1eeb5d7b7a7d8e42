"""Rich tables that fit the console, or else one block of ``column: value`` lines per row.

Rich squeezes a table wider than the console by wrapping its cells, mid-word where a cell has no
space (a method's name split over two lines), and by cutting headers to ``Dat…``. Output that is
not a terminal (a CI log, ``| less``, a file) is 80 columns wide, so this happens to most tables
of the CLI there. Every table the CLI prints goes through :func:`print_table` (or :func:`fit`):
a table whose natural width, every cell on one line, fits the console is drawn as it is; a
wider one becomes one block per row, its first column's ``header: value`` line first and the
others indented below it. A line of a block is never wrapped or cut: the names and values a user
greps for stay whole on one line (a terminal folds a long line on screen; a log keeps it whole).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Iterable

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: The width a table is measured at to find its natural width (wider than any console).
_UNBOUNDED = 1 << 20


def natural_width(table: Table, console: Console, options: ConsoleOptions | None = None) -> int:
    """The width of ``table`` with every cell on one line, borders and padding included.

    A ``min_width`` set so that a long title stays on one line is left out: a title wraps without
    harm, a cell does not.
    """
    bare = copy.copy(table)
    bare.min_width = None
    options = (options or console.options).update_width(_UNBOUNDED)
    return Measurement.get(console, options, bare).maximum


def _plain(console: Console, renderable: RenderableType) -> str:
    return _text(console, renderable).plain


def _column_range(table: Table, index: int, console: Console, options: ConsoleOptions) -> Measurement:
    """The narrowest (its longest word) and the widest (one line) a column's content can be,
    padding left out."""
    column = table.columns[index]
    cells = [*([column.header] if table.show_header else []), *column.cells,
             *([column.footer] if table.show_footer else [])]
    ranges = [Measurement.get(console, options, cell) for cell in cells]
    return Measurement(max((r.minimum for r in ranges), default=1), max((r.maximum for r in ranges), default=1))


def layout(table: Table, console: Console, width: int, wrap: Collection[str] = ()) -> Table | None:
    """``table`` as it is drawn within ``width``, or None where it cannot be without wrapping a cell
    outside the ``wrap`` columns (their headers, as plain text).

    A table whose natural width fits is returned as it is. Otherwise, where the ``wrap`` columns'
    cells, wrapped between words, make room enough, a copy with fixed column widths: every other
    column as wide as its widest cell, each ``wrap`` column at least as wide as its longest word,
    the room left shared in proportion to what each ``wrap`` column would need on one line.
    """
    natural = natural_width(table, console)
    if natural <= width:
        return table
    options = console.options.update_width(_UNBOUNDED)
    ranges = [_column_range(table, i, console, options) for i in range(len(table.columns))]
    wrapped = [i for i, column in enumerate(table.columns) if _plain(console, column.header) in wrap]
    saving = sum(ranges[i].maximum - ranges[i].minimum for i in wrapped)
    if not wrapped or natural - saving > width:
        return None
    room = width - (natural - saving)  # what the wrap columns get beyond their longest word
    widths = [r.maximum for r in ranges]
    given = 0
    for n, i in enumerate(wrapped):
        want = ranges[i].maximum - ranges[i].minimum
        extra = room - given if n == len(wrapped) - 1 else room * want // saving
        widths[i] = ranges[i].minimum + extra
        given += extra
    out = copy.copy(table)
    out.columns = [dataclasses.replace(column, width=w, min_width=None, max_width=None)
                   for column, w in zip(table.columns, widths, strict=True)]
    return out


def fits(table: Table, console: Console, width: int | None = None, wrap: Collection[str] = ()) -> bool:
    """Whether ``table`` can be drawn within ``width`` (default: the console's) with no cell
    wrapped outside the ``wrap`` columns."""
    return layout(table, console, console.width if width is None else width, wrap) is not None


class Fitted:
    """A table drawn where it fits the width it is given (:func:`layout`), else one block of lines
    per row (:func:`blocks`).

    Print it with ``crop=False`` (or ``soft_wrap=True``), as :func:`print_table` does, so that a
    block's long line is kept whole instead of cut at the console's edge.
    """

    def __init__(self, table: Table, wrap: Collection[str] = ()) -> None:
        self.table = table
        self.wrap = tuple(wrap)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        drawn = layout(self.table, console, options.max_width, self.wrap)
        if drawn is not None:
            yield drawn
            return
        yield from blocks(self.table, console)


def fit(table: Table, wrap: Collection[str] = ()) -> Fitted:
    """``table`` as a renderable that fits the console (:class:`Fitted`); ``wrap``: the headers of
    the columns of prose whose cells may wrap between words (never a column of names)."""
    return Fitted(table, wrap)


def print_table(console: Console, table: Table, wrap: Collection[str] = ()) -> None:
    """Print ``table`` drawn where it fits the console, else as one block per row; ``wrap``: as
    for :func:`fit`."""
    console.print(Fitted(table, wrap), crop=False)


def _text(console: Console, renderable: RenderableType) -> Text:
    """A cell as one line of text: markup rendered, line breaks made spaces."""
    if isinstance(renderable, Text):
        text = renderable.copy()
    elif isinstance(renderable, str):
        text = console.render_str(renderable, highlight=False)
    else:  # a renderable that is not text: its plain rendering
        lines = console.render_lines(renderable, console.options, pad=False)
        text = Text(" ".join("".join(segment.text for segment in line).strip() for line in lines))
    return Text(" ").join(text.split("\n"))


def blocks(table: Table, console: Console) -> Iterable[Text]:
    """One block per row of ``table``: its title, then per row a ``header: value`` line for every
    column with a value, the first column's unindented and the others indented by two spaces."""
    if table.title:
        title = _text(console, table.title)
        title.stylize(table.title_style or "")
        yield _line(title)
    headers = [_text(console, column.header) for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    for i in range(table.row_count):
        for j, header in enumerate(headers):
            value = _text(console, cells[j][i]) if i < len(cells[j]) else Text()
            value.rstrip()
            if not value.plain.strip():
                continue  # an empty cell: nothing to say
            line = Text("  " if j else "")
            line.append_text(header)
            line.append(": ")
            line.append_text(value)
            yield _line(line)
    if table.caption:
        yield _line(_text(console, table.caption))


def _line(text: Text) -> Text:
    """``text`` as one line that is never wrapped or cut."""
    text.no_wrap = True
    text.overflow = "ignore"
    text.end = "\n"
    return text
