"""Commands that run or talk to the platform: up, run, db, topics, task."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.console import Console

from spotcheck.cli.client import ApiOpt, TokenOpt, api_call, print_json
from spotcheck.settings import Settings

console = Console(stderr=True)

db_app = typer.Typer(help="The PostgreSQL schema.", no_args_is_help=True)
topics_app = typer.Typer(help="The Kafka topics of the catalog.", no_args_is_help=True)
task_app = typer.Typer(
    help="Sampling tasks, through the HTTP API of a running platform.", no_args_is_help=True
)


def _settings() -> Settings:
    from adapters.runtime import configure_logging

    settings = Settings()
    configure_logging(settings)
    return settings


def up(
    demo: Annotated[bool, typer.Option(help="Load demo data and stream simulated lab results.")] = False,
) -> None:
    """Start everything: broker and database (embedded unless configured), migrations, topics,
    the stream processor, the verdict processor, the store sink and the HTTP API."""
    from adapters.runtime import up as run_up

    raise typer.Exit(asyncio.run(run_up(_settings(), demo, console)))


def run(
    roles: Annotated[list[str], typer.Argument(help="api, relay, verdicts, sink, push, custody or streams")],
) -> None:
    """Run one or more workers against a configured broker and database (for deployments)."""
    from adapters.runtime import ROLES, run_roles, run_streams

    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        console.print(f"[red]unknown role {unknown[0]!r}; choose from {', '.join(ROLES)}[/]")
        raise typer.Exit(2)
    settings = _settings()
    if "streams" in roles:
        if len(roles) > 1:
            console.print("[red]`streams` runs alone: it owns its process[/]")
            raise typer.Exit(2)
        run_streams(settings)
        return
    raise typer.Exit(asyncio.run(run_roles(settings, tuple(roles), console)))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the SQL migrations not applied yet (SPOTCHECK_DATABASE_URL)."""
    from adapters.store import Store

    settings = _settings()
    if settings.database_url is None:
        console.print("[red]set SPOTCHECK_DATABASE_URL (`spotcheck up` migrates the embedded one)[/]")
        raise typer.Exit(2)

    async def go() -> list[str]:
        async with Store(settings.database_url.get_secret_value(), max_size=1) as store:  # type: ignore[union-attr]
            return await store.migrate()

    applied = asyncio.run(go())
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@topics_app.command("create")
def topics_create() -> None:
    """Create the topics of the catalog that do not exist yet (SPOTCHECK_KAFKA_BOOTSTRAP)."""
    from adapters.kafka import create_topics

    settings = _settings()
    if settings.kafka_bootstrap is None:
        console.print("[red]set SPOTCHECK_KAFKA_BOOTSTRAP (`spotcheck up` creates them itself)[/]")
        raise typer.Exit(2)
    created = asyncio.run(create_topics(settings))
    console.print(f"created: {', '.join(created)}" if created else "all topics exist")


@topics_app.command("list")
def topics_list() -> None:
    """The topic catalog: names, keys and what they carry."""
    from spotcheck.topics import CATALOG

    settings = Settings()
    for topic in CATALOG:
        typer.echo(f"{topic.full_name(settings):32} key={topic.key:14} {topic.description}")


@task_app.command("create")
def task_create(
    enterprise: Annotated[str, typer.Option("--enterprise", help="enterprise id")],
    product: Annotated[str, typer.Option(help="product name")],
    spec: Annotated[str, typer.Option(help="spec id, e.g. GB17930-2016:VIB:92")],
    lab: Annotated[str, typer.Option("--lab", help="lab id")],
    items: Annotated[str | None, typer.Option(help="comma-separated item codes (default: all)")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a sampling task by hand; prints the task as JSON."""
    body: dict[str, Any] = {
        "enterprise_id": enterprise,
        "product": product,
        "spec": spec,
        "lab_id": lab,
    }
    if items:
        body["items"] = [i.strip() for i in items.split(",") if i.strip()]
    print_json(api_call("POST", "/api/v1/tasks", body, api, token))


@task_app.command("show")
def task_show(task_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """A task with its results and verdicts, as JSON."""
    print_json(api_call("GET", f"/api/v1/tasks/{task_id}", None, api, token))


StepTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SPOTCHECK_TOKEN",
        help="an inspector's token, a lab's key or the admin token (default: the admin token)",
    ),
]


@task_app.command("step")
def task_step(
    task_id: str,
    step: Annotated[
        str, typer.Argument(help="the state the step leads to, e.g. sampling, sampled, in-transit")
    ],
    seal_test: Annotated[str | None, typer.Option(help="seal number of the test portion")] = None,
    seal_retained: Annotated[str | None, typer.Option(help="seal number of the retained portion")] = None,
    seal_state: Annotated[str | None, typer.Option(help="at receipt: intact or broken")] = None,
    signed_by: Annotated[list[str], typer.Option(help="an inspector who signed the form")] = [],  # noqa: B006
    enterprise_signature: Annotated[str | None, typer.Option(help="who signed for the enterprise")] = None,
    inspector: Annotated[list[str], typer.Option(help="assigned step: an inspector assigned")] = [],  # noqa: B006
    reason: Annotated[
        str | None, typer.Option(help="why (refused, not found, not sampleable, cancelled)")
    ] = None,
    lat: Annotated[float | None, typer.Option(help="latitude (WGS-84)")] = None,
    lon: Annotated[float | None, typer.Option(help="longitude (WGS-84)")] = None,
    place: Annotated[str | None, typer.Option(help="the place as written")] = None,
    at: Annotated[str | None, typer.Option(help="when, ISO 8601 with offset (default: now)")] = None,
    step_id: Annotated[
        str | None, typer.Option(help="your id for the step: a resend is then harmless")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="admin token only: who did it")] = None,
    api: ApiOpt = None,
    token: StepTokenOpt = None,
) -> None:
    """Record a custody step of a task; prints the step and the state it leads to."""
    body: dict[str, Any] = {"step": step}
    if seal_test or seal_retained:
        body["seals"] = {k: v for k, v in (("test", seal_test), ("retained", seal_retained)) if v}
    if signed_by or enterprise_signature:
        body["signatures"] = {"inspectors": signed_by, "enterprise": enterprise_signature}
    if lat is not None or lon is not None or place:
        body["where"] = {k: v for k, v in (("lat", lat), ("lon", lon), ("text", place)) if v is not None}
    for name, value in (
        ("seal_state", seal_state),
        ("reason", reason),
        ("at", at),
        ("step_id", step_id),
        ("actor", actor),
    ):
        if value is not None:
            body[name] = value
    if inspector:
        body["inspectors"] = inspector
    print_json(api_call("POST", f"/api/v1/tasks/{task_id}/custody", body, api, token))


@task_app.command("trail")
def task_trail(
    task_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the trail as JSON")] = False,
    api: ApiOpt = None,
    token: StepTokenOpt = None,
) -> None:
    """The chain of custody of a task's sample: its steps in time order and every gap."""
    from rich.table import Table

    trail = api_call("GET", f"/api/v1/tasks/{task_id}/trail", None, api, token)
    if as_json:
        print_json(trail)
        return
    out = Console()
    out.print(f"[bold]{trail['task_id']}[/] sample {trail['sample_id']}: [bold]{trail['state']}[/]")
    table = Table("at", "step", "by", "seals", "where / reason", "step id")
    for s in trail["steps"]:
        seals = s.get("seals") or {}
        sealed = " / ".join(v for v in (seals.get("test"), seals.get("retained")) if v)
        if s.get("seal_state"):
            sealed += f" ({s['seal_state']})"
        where = s.get("where") or {}
        spot = where.get("text") or (
            f"{where['lat']}, {where['lon']}" if where.get("lat") is not None else ""
        )
        table.add_row(
            s["at"],
            s["step"],
            f"{s['actor']} ({s['actor_role']})",
            sealed,
            s.get("reason") or spot,
            s["step_id"],
        )
    out.print(table)
    if not trail["gaps"]:
        out.print("[green]no gaps[/]")
    for gap in trail["gaps"]:
        out.print(f"[red]gap[/] {gap['kind']} at {gap['step_id']}: {gap['detail']}")


def register(app: typer.Typer) -> None:
    """Add the platform commands to the main app."""
    app.command()(up)
    app.command()(run)
    app.add_typer(db_app, name="db")
    app.add_typer(topics_app, name="topics")
    app.add_typer(task_app, name="task")
