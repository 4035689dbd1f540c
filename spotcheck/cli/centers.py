"""`spotcheck centers …`: subscriptions of quality-testing centers and their deliveries, through
the HTTP API of a running platform."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from spotcheck.cli.client import ApiOpt, TokenOpt, api_call, print_json

console = Console(stderr=True)

centers_app = typer.Typer(
    help="Quality-testing centers that receive verdicts (and raw results) as signed pushes.",
    no_args_is_help=True,
)


@centers_app.command("add")
def add(
    center_id: Annotated[str, typer.Argument(help="the center's id, e.g. QTC-JINAN")],
    name: Annotated[str, typer.Option(help="the center's name")],
    url: Annotated[str, typer.Option(help="the http(s) endpoint pushes are POSTed to")],
    spec: Annotated[
        list[str] | None, typer.Option(help="spec id, or a prefix ending in ':' or '*' (repeatable)")
    ] = None,
    product: Annotated[
        list[str] | None, typer.Option(help='product category, e.g. "motor gasoline" (repeatable)')
    ] = None,
    district: Annotated[list[str] | None, typer.Option(help="enterprise district (repeatable)")] = None,
    outcome: Annotated[
        list[str] | None, typer.Option(help="qualified, unqualified or incomplete (repeatable)")
    ] = None,
    results: Annotated[bool, typer.Option("--results", help="also push every raw lab result")] = False,
    secret: Annotated[str | None, typer.Option(help="signing secret (default: a new one)")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Subscribe a center; prints it with its signing secret, which is shown only this once."""
    body: dict[str, Any] = {
        "center_id": center_id,
        "name": name,
        "url": url,
        "filters": {
            "products": product or [],
            "specs": spec or [],
            "districts": district or [],
            "outcomes": outcome or [],
        },
        "include_results": results,
    }
    if secret is not None:
        body["secret"] = secret
    print_json(api_call("POST", "/api/v1/centers", body, api, token))
    console.print("[yellow]keep the secret: it is not shown again[/]")


@centers_app.command("list")
def list_(api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Every center with its filters and delivery counts."""
    print_json(api_call("GET", "/api/v1/centers", None, api, token))


@centers_app.command("show")
def show(center_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """One center with its filters and delivery counts."""
    print_json(api_call("GET", f"/api/v1/centers/{center_id}", None, api, token))


@centers_app.command("disable")
def disable(center_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Stop matching new events for a center (deliveries already queued are still sent)."""
    print_json(api_call("POST", f"/api/v1/centers/{center_id}/disable", {}, api, token))


@centers_app.command("deliveries")
def deliveries(
    center_id: str,
    state: Annotated[str | None, typer.Option(help="pending, delivered or failed")] = None,
    delivery: Annotated[str | None, typer.Option(help="one delivery, with its attempts")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """A center's deliveries, newest first (or one of them with every attempt)."""
    if delivery is not None:
        print_json(api_call("GET", f"/api/v1/centers/{center_id}/deliveries/{delivery}", None, api, token))
        return
    path = f"/api/v1/centers/{center_id}/deliveries" + (f"?state={state}" if state else "")
    print_json(api_call("GET", path, None, api, token))


@centers_app.command("redeliver")
def redeliver(
    center_id: str,
    delivery: Annotated[list[str] | None, typer.Option(help="a failed delivery id (repeatable)")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="every failed delivery")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Send failed (dead-lettered) deliveries again, from a fresh retry budget."""
    if bool(delivery) == all_failed:
        console.print("[red]give --delivery ID (one or more) or --all-failed[/]")
        raise typer.Exit(2)
    body: dict[str, Any] = {"all_failed": True} if all_failed else {"delivery_ids": delivery}
    print_json(api_call("POST", f"/api/v1/centers/{center_id}/redeliver", body, api, token))
