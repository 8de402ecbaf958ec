"""`overlapscope analyze` (being written by the lead)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the analyze command to the CLI."""

    @app.command()
    def analyze(paths: list[str]) -> None:
        """Analyze Kineto traces (work in progress)."""
        raise typer.Exit(2)
