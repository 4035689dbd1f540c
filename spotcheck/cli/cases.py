"""`spotcheck cases`: enforcement cases of the running platform: list, one case's history, objection."""

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

cases_app = typer.Typer(
    help="Enforcement cases: from an unqualified result to closure.", no_args_is_help=True
)


def _local(text: str | None, zone: ZoneInfo) -> str:
    return datetime.fromisoformat(text).astimezone(zone).strftime("%Y-%m-%d %H:%M") if text else ""


@cases_app.command("list")
def list_cases(
    state: Annotated[str | None, typer.Option(help="one state, e.g. objection-window, follow-up")] = None,
    enterprise: Annotated[str | None, typer.Option(help="one enterprise id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print the cases as JSON")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cases, newest first."""
    query: dict[str, Any] = {"limit": limit}
    for name, value in (("state", state), ("enterprise_id", enterprise)):
        if value is not None:
            query[name] = value
    found = api_call("GET", "/api/v1/cases?" + urllib.parse.urlencode(query), None, api, token)["cases"]
    if as_json:
        print_json(found)
        return
    zone = ZoneInfo(Settings().timezone)
    table = Table("case", "enterprise", "product", "state", "opened", "final", "failing", "referred")
    for c in found:
        table.add_row(
            c["case_id"],
            c["enterprise_id"],
            c["product"],
            c["state"],
            _local(c["opened_at"], zone),
            f"{c['final_outcome'] or ''} {_local(c['final_at'], zone)}".strip(),
            ", ".join(c["failing_items"]),
            "yes" if c["referred"] else "",
        )
    console = Console()
    console.print(table)
    console.print(f"{len(found)} case(s); times in {zone.key}")


@cases_app.command("show")
def show(
    case_id: Annotated[str, typer.Argument(help="e.g. C-T-2026-000042")],
    as_json: Annotated[bool, typer.Option("--json", help="print the case as JSON")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """One case with its full history."""
    case = api_call("GET", f"/api/v1/cases/{urllib.parse.quote(case_id)}", None, api, token)
    if as_json:
        print_json(case)
        return
    zone = ZoneInfo(Settings().timezone)
    console = Console()
    console.print(
        f"[bold]{case['case_id']}[/] {case['enterprise_id']} · {case['product']} ({case['spec']}) · "
        f"[bold]{case['state']}[/]" + (" · referred" if case["referred"] else "")
    )
    table = Table("#", "at", "event", "state", "deadline", "task", "detail")
    for e in case["events"]:
        table.add_row(
            str(e["seq"]),
            _local(e["at"], zone),
            e["kind"] + (f" ({e['outcome']})" if e.get("outcome") else ""),
            e["state"],
            _local(e.get("deadline"), zone),
            e.get("related_task_id") or "",
            e.get("detail", ""),
        )
    console.print(table)


@cases_app.command("object")
def object_(
    case_id: Annotated[str, typer.Argument(help="the case")],
    by: Annotated[str, typer.Option(help="who objects for the enterprise")],
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Record the enterprise's objection (within the window): a re-test of the retained sample follows."""
    body = {"by": by, "reason": reason}
    answer = api_call("POST", f"/api/v1/cases/{urllib.parse.quote(case_id)}/objection", body, api, token)
    typer.echo(f"objection to {answer['case_id']} accepted; the re-test task follows")


@cases_app.command("notice")
def notice(
    case_id: Annotated[str, typer.Argument(help="the case")],
    received: Annotated[str, typer.Option(help="ISO time with offset, e.g. 2026-03-04T09:00+08:00")],
    by: Annotated[str | None, typer.Option(help="who signed for it")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Record when the enterprise received the notice (the objection window runs from that day)."""
    body = {"received_at": received, "by": by}
    answer = api_call(
        "POST", f"/api/v1/cases/{urllib.parse.quote(case_id)}/notice-received", body, api, token
    )
    typer.echo(f"receipt of the notice of {answer['case_id']} recorded")
