"""`rayot report`: the tables and figures of a paper, from results Parquet."""

from __future__ import annotations

import typer


def report(results: list[str] = typer.Option(["results"], "--results")) -> None:
    """Render tables and figures."""
    raise typer.Exit(1)
