"""`spotcheck inspectors …` and custody steps of tasks."""

from __future__ import annotations

import typer

inspectors_app = typer.Typer(help="Inspectors' API tokens.", no_args_is_help=True)
