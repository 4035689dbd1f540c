"""`spotcheck draw …` and `spotcheck campaign …`: double-random draws and special campaigns."""

from __future__ import annotations

import typer

draw_app = typer.Typer(help="Double-random draws: run, verify, cancel.", no_args_is_help=True)
campaign_app = typer.Typer(help="Special campaigns (专项抽查) on a schedule.", no_args_is_help=True)
