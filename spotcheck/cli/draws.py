"""`spotcheck draw …` and `spotcheck campaign …`: double-random draws and special campaigns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from spotcheck.cli.client import ApiOpt, TokenOpt, api_call, print_json
from spotcheck.draws import DrawResult, Plan, Snapshot, verify
from spotcheck.errors import SpotcheckError
from spotcheck.events import describe_validation_error

draw_app = typer.Typer(help="Double-random draws: run, verify, cancel.", no_args_is_help=True)
campaign_app = typer.Typer(help="Special campaigns (专项抽查) on a schedule.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        err.print(f"[red]cannot read {what} {path}: {exc.strerror}[/]")
        raise typer.Exit(2) from None
    except json.JSONDecodeError as exc:
        err.print(f"[red]{path}:{exc.lineno}: not valid JSON: {exc.msg}[/]")
        raise typer.Exit(2) from None


def _summary(record: dict[str, Any]) -> None:
    out.print(
        f"[bold]{record['draw_id']}[/] {record['status']}: "
        f"plan {record['plan_id']} of {record['draw_date']}, "
        f"{record['selected']} selected, {record['unfilled']} unfilled, {record['excluded']} excluded; "
        f"{len(record['task_ids'])} task(s)"
    )
    out.print(f"seed {record['seed']}")
    out.print(
        f"directory snapshot sha256 {record['snapshot_digest']}; result sha256 {record['result_digest']}"
    )


@draw_app.command("run")
def run(
    plan_file: Annotated[Path, typer.Argument(help="the plan, JSON")],
    seed: Annotated[str | None, typer.Option(help="hex seed; default: from the OS's secure source")] = None,
    platform_facts: Annotated[
        bool, typer.Option(help="fill risk weights and last checks from the platform's records")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the draw record as JSON")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Draw enterprises, inspectors and labs for a plan; create and publish the tasks."""
    body: dict[str, Any] = {"plan": _read_json(plan_file, "plan"), "platform_facts": platform_facts}
    if seed is not None:
        body["seed"] = seed.lower()
    record = api_call("POST", "/api/v1/draws", body, api, token)
    if as_json:
        print_json(record)
    else:
        _summary(record)


@draw_app.command("list")
def list_(
    campaign: Annotated[str | None, typer.Option(help="a campaign's rounds only")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Draws, newest first."""
    query = f"?campaign_id={campaign}" if campaign else ""
    table = Table("draw", "status", "plan", "date", "selected", "unfilled", "drawn by")
    for d in api_call("GET", f"/api/v1/draws{query}", None, api, token)["draws"]:
        table.add_row(
            d["draw_id"],
            d["status"],
            d["plan_id"],
            d["draw_date"],
            str(d["selected"]),
            str(d["unfilled"]),
            d["drawn_by"],
        )
    out.print(table)


@draw_app.command("show")
def show(draw_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """A draw: its selections (enterprise, inspectors, lab), the places left unfilled and why."""
    found = api_call("GET", f"/api/v1/draws/{draw_id}", None, api, token)
    _summary(found)
    table = Table("task", "enterprise", "product", "stratum", "weight", "inspectors", "lab")
    for task_id, s in zip(found["task_ids"], found["result"]["selections"], strict=False):
        stratum = ", ".join(s["stratum"].values())
        table.add_row(
            task_id,
            s["enterprise_id"],
            s["product"],
            stratum,
            str(s["weight"]),
            " ".join(s["inspectors"]),
            s["lab_id"],
        )
    out.print(table)
    for u in found["result"]["unfilled"]:
        out.print(
            f"[yellow]unfilled[/] {u['product']} {u.get('enterprise_id') or ''}: "
            f"{u['reason']} ({u['detail']})"
        )


@draw_app.command("export")
def export(draw_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """The published inputs of a draw as JSON (plan, directory snapshot, seed, history, result), for
    `spotcheck draw verify --inputs FILE` anywhere."""
    print_json(api_call("GET", f"/api/v1/draws/{draw_id}/inputs", None, api, token))


@draw_app.command("verify")
def verify_(
    draw_id: Annotated[str | None, typer.Argument(help="a draw of the running platform")] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="a file written by `spotcheck draw export` instead")
    ] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Re-run a published draw here, from its seed and directory snapshot, and show it is identical.
    Exit 0 identical, 1 different, 2 unreadable inputs."""
    if (draw_id is None) == (inputs is None):
        raise typer.BadParameter("give a DRAW id or --inputs FILE")
    data = (
        _read_json(inputs, "inputs")
        if inputs is not None
        else api_call("GET", f"/api/v1/draws/{draw_id}/inputs", None, api, token)
    )
    try:
        plan = Plan.model_validate(data["plan"])
        snapshot = Snapshot.model_validate(data["snapshot"])
        published = DrawResult.model_validate(data["result"])
        seed = bytes.fromhex(data["seed"])
        history = data["history"]
    except (KeyError, ValueError, ValidationError) as exc:
        detail = describe_validation_error(exc) if isinstance(exc, ValidationError) else repr(exc)
        err.print(f"[red]the draw's inputs are not readable: {detail}[/]")
        raise typer.Exit(2) from None
    checks = {
        "directory snapshot digest": snapshot.digest() == published.snapshot_digest,
        "plan digest": plan.digest() == published.plan_digest,
    }
    try:
        checks["re-run gives the same selections"] = verify(published, plan, snapshot, seed, history)
    except SpotcheckError as exc:
        err.print(f"[red]the draw cannot be re-run: {exc}[/]")
        raise typer.Exit(1) from None
    record = data.get("record") or {}
    if record:
        checks["result digest as published"] = published.digest() == record.get("result_digest")
    for what, ok in checks.items():
        out.print(f"{'[green]ok[/]' if ok else '[red]DIFFERENT[/]'}  {what}")
    name = record.get("draw_id", draw_id or str(inputs))
    if all(checks.values()):
        out.print(
            f"[bold green]{name} is identical[/]: "
            f"{len(published.selections)} selections, seed {published.seed}"
        )
        return
    out.print(f"[bold red]{name} does not match its published inputs[/]")
    raise typer.Exit(1)


@draw_app.command("cancel")
def cancel(
    draw_id: str,
    reason: Annotated[str, typer.Option(help="why the draw is cancelled (kept with it)")],
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a draw whose samples are not taken yet (its tasks are cancelled); it is kept, never edited."""
    _summary(api_call("POST", f"/api/v1/draws/{draw_id}/cancel", {"reason": reason}, api, token))


@draw_app.command("redraw")
def redraw(
    draw_id: str,
    reason: Annotated[str, typer.Option(help="why the draw is redrawn (kept with both)")],
    seed: Annotated[str | None, typer.Option(help="hex seed; default: a fresh one")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a draw (if not yet) and draw its plan again with a new seed."""
    body = {"reason": reason, **({"seed": seed.lower()} if seed else {})}
    _summary(api_call("POST", f"/api/v1/draws/{draw_id}/redraw", body, api, token))


@campaign_app.command("add")
def campaign_add(
    campaign_file: Annotated[Path, typer.Argument(help="the campaign, JSON")],
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add or update a special campaign (its plan template, recurrence and days)."""
    print_json(api_call("POST", "/api/v1/campaigns", _read_json(campaign_file, "campaign"), api, token))


@campaign_app.command("list")
def campaign_list(api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Special campaigns."""
    table = Table("campaign", "name", "every", "starts", "ends", "active")
    for c in api_call("GET", "/api/v1/campaigns", None, api, token)["campaigns"]:
        every = f"{c['recurrence']['every']} (day {c['recurrence']['day']})"
        table.add_row(c["campaign_id"], c["name"], every, c["starts"], c["ends"] or "", str(c["active"]))
    out.print(table)


@campaign_app.command("run-due")
def campaign_run_due(api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Draw every campaign round due today now (the platform also does this by itself)."""
    for record in api_call("POST", "/api/v1/campaigns/run-due", None, api, token)["draws"]:
        _summary(record)
