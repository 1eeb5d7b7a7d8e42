"""How a cell reads, shared by every text format; each format supplies its own markup."""

from __future__ import annotations

from collections.abc import Callable

from rayot.report.model import Cell

MISSING = "—"


def number(value: float, signed: bool = False) -> str:
    """Two decimals, the precision of the papers; differences carry their sign (a true minus).

    A value that rounds to zero reads ``0.00`` (``+0.00`` signed), never ``-0.00``: Python keeps the
    sign of a tiny negative number through rounding, which would show a difference of nothing as a
    loss.
    """
    shown = round(value, 2) + 0.0  # -0.0 + 0.0 is 0.0: the sign of a zero goes
    return f"{shown:+.2f}".replace("-", "\u2212") if signed else f"{shown:.2f}"


def render_cell(
    cell: Cell,
    show_std: bool,
    *,
    bold: Callable[[str], str] = lambda s: s,
    std: Callable[[str], str] = lambda s: f" ± {s}",
    flag: Callable[[str], str] = lambda s: f" ({s})",
    escape: Callable[[str], str] = lambda s: s,
    missing: str = MISSING,
) -> str:
    """``"71.23 ± 0.40 (2/3 seeds)"`` with the format's markup for bold, std and flags."""
    if cell.text is not None:
        return escape(cell.text)
    if cell.value is None:
        return missing
    text = escape(number(cell.value, cell.signed))  # a true minus needs spelling in LaTeX
    if cell.best:
        text = bold(text)
    if show_std and cell.std is not None and cell.n is not None and cell.n > 1:
        text += std(f"{cell.std:.2f}")
    if cell.flag:
        text += flag(escape(cell.flag))
    return text


def column_groups(groups: list[str | None]) -> list[tuple[str | None, int]]:
    """Runs of equal group names: ``[a, a, b] -> [(a, 2), (b, 1)]``."""
    runs: list[tuple[str | None, int]] = []
    for g in groups:
        if runs and runs[-1][0] == g:
            runs[-1] = (g, runs[-1][1] + 1)
        else:
            runs.append((g, 1))
    return runs
