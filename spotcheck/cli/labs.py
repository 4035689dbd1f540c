"""`spotcheck labs`: the lab registry and the labs' API keys, through the running platform's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from spotcheck.cli.client import ApiOpt, TokenOpt, api_call, print_json

labs_app = typer.Typer(
    help="Testing laboratories: registry, accreditation scope, API keys.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="A lab's API keys (shown once when created; only a hash is kept).", no_args_is_help=True
)
labs_app.add_typer(keys_app, name="key")


def _scope(specs: list[str], products: list[str], items: str | None) -> list[dict[str, Any]]:
    only = [i.strip() for i in items.split(",") if i.strip()] if items else None
    entries: list[dict[str, Any]] = [{"spec": s} for s in specs] + [{"product": p} for p in products]
    for entry in entries:
        if only:
            entry["items"] = only
    return entries


@labs_app.command("add")
def add(
    lab_id: str,
    name: Annotated[str, typer.Option(help="the lab's name")],
    spec: Annotated[
        list[str], typer.Option(help="accredited spec id or pattern, e.g. 'GB17930-2016:*'")
    ] = [],  # noqa: B006
    product: Annotated[list[str], typer.Option(help="accredited product category, e.g. 'motor diesel'")] = [],  # noqa: B006
    items: Annotated[str | None, typer.Option(help="comma-separated items the scope is limited to")] = None,
    scope_file: Annotated[Path | None, typer.Option(help="JSON list of scope entries instead")] = None,
    capacity: Annotated[int, typer.Option(help="samples a day")] = 50,
    contact: Annotated[str | None, typer.Option(help="contact person, phone or e-mail")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add a lab with its accreditation scope (an existing one is refused: `labs update` changes it)."""
    scope = json.loads(scope_file.read_text()) if scope_file else _scope(spec, product, items)
    if not scope:
        raise typer.BadParameter("give at least one --spec or --product (or --scope-file)")
    body = {"lab_id": lab_id, "name": name, "scope": scope, "daily_capacity": capacity, "contact": contact}
    print_json(api_call("POST", "/api/v1/labs", body, api, token))


@labs_app.command("update")
def update(
    lab_id: str,
    name: Annotated[str | None, typer.Option(help="the lab's new name")] = None,
    spec: Annotated[list[str], typer.Option(help="accredited spec id or pattern (replaces the scope)")] = [],  # noqa: B006
    product: Annotated[list[str], typer.Option(help="accredited product category (replaces the scope)")] = [],  # noqa: B006
    items: Annotated[
        str | None, typer.Option(help="comma-separated items the new scope is limited to")
    ] = None,
    scope_file: Annotated[
        Path | None, typer.Option(help="JSON list of scope entries (replaces the scope)")
    ] = None,
    capacity: Annotated[int | None, typer.Option(help="samples a day")] = None,
    contact: Annotated[str | None, typer.Option(help="contact person, phone or e-mail")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change a lab: only what is given changes (a new --spec/--product/--scope-file replaces the scope)."""
    body: dict[str, Any] = {}
    if scope_file is not None:
        body["scope"] = json.loads(scope_file.read_text())
    elif spec or product:
        body["scope"] = _scope(spec, product, items)
    elif items:
        raise typer.BadParameter("--items limits a new scope: give it with --spec or --product")
    for field, value in (("name", name), ("daily_capacity", capacity), ("contact", contact)):
        if value is not None:
            body[field] = value
    if not body:
        raise typer.BadParameter("nothing to change: give --name, --spec, --product, --capacity or --contact")
    print_json(api_call("PATCH", f"/api/v1/labs/{lab_id}", body, api, token))


@labs_app.command("list")
def list_(api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Every lab of the registry."""
    labs = api_call("GET", "/api/v1/labs", None, api, token)["labs"]
    table = Table("lab", "name", "scope", "capacity/day", "enabled")
    for lab in labs:
        scope = "; ".join(
            (e.get("spec") or e.get("product", ""))
            + (f" [{', '.join(e['items'])}]" if e.get("items") else "")
            for e in lab["scope"]
        )
        table.add_row(
            lab["lab_id"], lab["name"], scope, str(lab["daily_capacity"]), "yes" if lab["enabled"] else "no"
        )
    Console().print(table)


@labs_app.command("show")
def show(lab_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """One lab, with its keys (prefixes only) and its turnaround and backlog."""
    lab = api_call("GET", f"/api/v1/labs/{lab_id}", None, api, token)
    lab["keys"] = api_call("GET", f"/api/v1/labs/{lab_id}/keys", None, api, token)["keys"]
    lab["stats"] = api_call("GET", f"/api/v1/labs/{lab_id}/stats", None, api, token)
    print_json(lab)


@labs_app.command("disable")
def disable(lab_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Disable a lab: its keys stop working and its results are refused."""
    print_json(api_call("POST", f"/api/v1/labs/{lab_id}/disable", None, api, token))


@labs_app.command("enable")
def enable(lab_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Enable a disabled lab again."""
    print_json(api_call("POST", f"/api/v1/labs/{lab_id}/enable", None, api, token))


@keys_app.command("create")
def key_create(lab_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """A new API key for the lab; printed once, keep it safe."""
    made = api_call("POST", f"/api/v1/labs/{lab_id}/keys", None, api, token)
    typer.echo(made["key"])
    Console(stderr=True).print(f"key {made['prefix']} for lab {lab_id}: shown once, only its hash is kept")


@keys_app.command("list")
def key_list(lab_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """The lab's keys by prefix, with when they were created, last used and revoked."""
    print_json(api_call("GET", f"/api/v1/labs/{lab_id}/keys", None, api, token)["keys"])


@keys_app.command("revoke")
def key_revoke(lab_id: str, prefix: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Revoke a key at once (the API trusts a verified key for a few seconds at most)."""
    print_json(api_call("POST", f"/api/v1/labs/{lab_id}/keys/{prefix}/revoke", None, api, token))


@keys_app.command("rotate")
def key_rotate(lab_id: str, prefix: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Revoke a key and print its replacement (once)."""
    made = api_call("POST", f"/api/v1/labs/{lab_id}/keys/{prefix}/rotate", None, api, token)
    typer.echo(made["key"])
