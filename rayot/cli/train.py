"""`rayot train CONFIG.yaml [key=value ...]`: one trial, one process, no Ray."""

from __future__ import annotations

import typer


def train(config: str = typer.Argument(..., help="Trial configuration (YAML).")) -> None:
    """Train and evaluate one trial."""
    raise typer.Exit(1)
