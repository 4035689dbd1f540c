"""Commands that need no broker or database: `judge` and `specs`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the offline commands to the main app."""
