"""`spotcheck registry …`: the directory of enterprises, inspectors and products."""

from __future__ import annotations

import typer

registry_app = typer.Typer(help="The directory: enterprises, inspectors, products.", no_args_is_help=True)
