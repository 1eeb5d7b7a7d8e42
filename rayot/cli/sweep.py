"""`rayot sweep SPEC.yaml`: fan a grid of trials out on Ray Tune over Ray Train."""

from __future__ import annotations

import typer


def sweep(spec: str = typer.Argument(..., help="Sweep specification (YAML).")) -> None:
    """Run every trial of a sweep."""
    raise typer.Exit(1)
