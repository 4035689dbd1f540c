"""Commands that run or talk to the platform: up, run, db, topics, task."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the platform commands to the main app."""
