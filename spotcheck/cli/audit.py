"""`spotcheck audit`: the audit log of every write through the API, from the running platform."""

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


def _who(entry: dict[str, Any]) -> str:
    who = entry["actor_kind"] + (f" {entry['actor_id']}" if entry.get("actor_id") else "")
    return who + (f" ({entry['named_actor']})" if entry.get("named_actor") else "")


def audit(
    actor: Annotated[
        str | None, typer.Option(help="admin, anonymous, a lab (lab:LAB-1) or an inspector (inspector:INS-1)")
    ] = None,
    route: Annotated[str | None, typer.Option(help="a route's name, e.g. labs:create")] = None,
    target: Annotated[str | None, typer.Option(help="the thing written: a lab, a task, a draw …")] = None,
    status: Annotated[int | None, typer.Option(help="the answer's status, e.g. 403")] = None,
    refused: Annotated[
        bool | None, typer.Option("--refused/--accepted", help="refused (4xx, 5xx) or accepted only")
    ] = None,
    since: Annotated[str | None, typer.Option(help="at or after this ISO time with offset")] = None,
    until: Annotated[str | None, typer.Option(help="before this ISO time with offset")] = None,
    before: Annotated[int | None, typer.Option(help="entries before this seq (the next page)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many, newest first")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the entries, with before and after, as JSON")
    ] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Who wrote what and when through the API (and this CLI), accepted or refused, newest first."""
    query: dict[str, Any] = {"limit": limit}
    if actor is not None:
        kind, _, actor_id = actor.partition(":")
        if kind not in {"admin", "lab", "inspector", "anonymous"}:
            raise typer.BadParameter("--actor is admin, anonymous, lab:ID or inspector:ID")
        query["actor_kind"] = kind
        if actor_id:
            query["actor_id"] = actor_id
    for name, value in (
        ("route", route),
        ("target_id", target),
        ("status", status),
        ("since", since),
        ("until", until),
        ("before", before),
    ):
        if value is not None:
            query[name] = value
    if refused is not None:
        query["refused"] = "true" if refused else "false"
    found = api_call("GET", "/api/v1/audit?" + urllib.parse.urlencode(query), None, api, token)["entries"]
    if as_json:
        print_json(found)
        return
    zone = ZoneInfo(Settings().timezone)
    table = Table("seq", "at", "who", "method", "route", "target", "status")
    for e in found:
        at = datetime.fromisoformat(e["at"]).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        style = "red" if e["status"] >= 400 else None
        table.add_row(
            str(e["seq"]),
            at,
            _who(e),
            e["method"],
            e["route"],
            e["target_id"] or "",
            str(e["status"]),
            style=style,
        )
    console = Console()
    console.print(table)
    more = f"; older: --before {found[-1]['seq']}" if len(found) == limit else ""
    console.print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}; times in {zone.key}{more}")


def register(app: typer.Typer) -> None:
    """Add `audit` to the main app."""
    app.command()(audit)
