"""The `spotcheck` command line: one typer app; I/O libraries are imported inside commands only."""

from __future__ import annotations

import typer

from spotcheck.cli import alerts, audit, imports, offline, platform
from spotcheck.cli.bench import bench_app
from spotcheck.cli.cases import cases_app
from spotcheck.cli.centers import centers_app
from spotcheck.cli.custody import inspectors_app
from spotcheck.cli.draws import campaign_app, draw_app
from spotcheck.cli.labs import labs_app
from spotcheck.cli.registry import registry_app

app = typer.Typer(
    name="spotcheck",
    help="Product-quality supervisory spot checks: draws, samples, lab results, verdicts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

offline.register(app)
platform.register(app)
imports.register(app)
alerts.register(app)
audit.register(app)
app.add_typer(bench_app, name="bench")
app.add_typer(labs_app, name="labs")
app.add_typer(centers_app, name="centers")
app.add_typer(registry_app, name="registry")
app.add_typer(inspectors_app, name="inspectors")
app.add_typer(draw_app, name="draw")
app.add_typer(campaign_app, name="campaign")
app.add_typer(cases_app, name="cases")


def main() -> None:
    app()
