"""`rayot data ...`: inspect, sample and synthesise benchmark data."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmark data: few-shot subsets, checks, synthetic data.", no_args_is_help=True)
