"""`spotcheck alerts`: overdue tasks (sampling or report deadline missed), from the running platform."""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table

from spotcheck.cli.client import ApiOpt, TokenOpt, api_call, print_json
from spotcheck.settings import Settings

KINDS = ("sampling-overdue", "report-overdue")


def _local(text: str, zone: ZoneInfo) -> str:
    return datetime.fromisoformat(text).astimezone(zone).strftime("%Y-%m-%d %H:%M")


def alerts(
    kind: Annotated[str | None, typer.Option(help="sampling-overdue or report-overdue")] = None,
    task: Annotated[str | None, typer.Option(help="one task's alerts")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="detected at or after this ISO time with offset, e.g. 2026-03-01T00:00+08:00"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many, newest first")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print the alerts as JSON")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Overdue alerts: tasks not sampled, or not reported, by their due time (bureau's time zone)."""
    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"--kind is one of {', '.join(KINDS)}")
    query: dict[str, Any] = {"limit": limit}
    for name, value in (("kind", kind), ("task_id", task), ("since", since)):
        if value is not None:
            query[name] = value
    found = api_call("GET", "/api/v1/alerts?" + urllib.parse.urlencode(query), None, api, token)["alerts"]
    if as_json:
        print_json(found)
        return
    zone = ZoneInfo(Settings().timezone)
    table = Table("task", "kind", "due", "detected", "state", "enterprise", "lab", "inspectors")
    for a in found:
        table.add_row(
            a["task_id"],
            a["kind"],
            _local(a["due"], zone),
            _local(a["detected_at"], zone),
            a["state"],
            a["enterprise_id"],
            a["lab_id"],
            ", ".join(a["inspectors"]),
        )
    console = Console()
    console.print(table)
    console.print(f"{len(found)} alert(s); times in {zone.key}")


def register(app: typer.Typer) -> None:
    """Add `alerts` to the main app."""
    app.command()(alerts)
