"""Commands that need no broker or database: `judge` and `specs`."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.table import Table

from spotcheck.errors import InvalidInput, SpotcheckError
from spotcheck.events import Measured, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.specs import Catalog, Spec, load_catalog
from spotcheck.verdict import judge

BAD_INPUT = 2

CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="Folder of catalog *.json files to use instead of the one shipped with spotcheck.",
        file_okay=False,
    ),
]


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item: str
    value: Measured


class _Request(BaseModel):
    """One input line of `spotcheck judge`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str
    sampled_at: str
    results: list[_Result]
    plan: list[str] | None = None


def _sampled_on(text: str, zone: ZoneInfo) -> date:
    """The sampling date in the bureau zone, from a date or a datetime with an offset."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"sampled_at {text!r} is neither a date nor an ISO datetime", field="sampled_at"
        ) from None
    if moment.tzinfo is None:
        raise InvalidInput(
            f"sampled_at {text!r} has no UTC offset, so its date is ambiguous", field="sampled_at"
        )
    return moment.astimezone(zone).date()


def _judge_line(text: str, catalog: Catalog, zone: ZoneInfo) -> dict[str, Any]:
    try:
        request = _Request.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc).replace("Value error, ", "")) from None
    spec = catalog.get(request.spec)
    results: dict[str, Decimal] = {}
    for result in request.results:
        if result.item in results:
            raise InvalidInput(f"item {result.item!r} has two results", field=result.item)
        results[result.item] = result.value
    judgement = judge(spec, results, _sampled_on(request.sampled_at, zone), request.plan)
    return {
        "verdict": judgement.outcome.value,
        "spec": spec.id,
        "items": [item.model_dump(mode="json") for item in judgement.items],
        "missing": list(judgement.missing),
    }


_JUDGE_HELP = "\n\n".join(
    (
        "Judge samples offline: one JSON line in, one JSON verdict out.",
        'Each input line is {"spec": ID, "sampled_at": DATE or DATETIME with offset, '
        '"results": [{"item": CODE, "value": "8.30"}, ...], "plan": [CODE, ...]}; '
        "the plan is optional and defaults to every item of the spec. Values are decimal "
        "strings: a JSON number is refused, since its digits would be lost. A datetime counts "
        "on its date in the bureau zone (SPOTCHECK_TIMEZONE, default Asia/Shanghai).",
        'Each output line is {"verdict": "qualified" | "unqualified" | "incomplete", '
        '"spec", "items": [...], "missing": [...]}.',
        "A bad line (malformed JSON, an unknown spec or item, a value that is not a decimal "
        'string) prints "line N: reason" on stderr and gets no verdict; the lines after it '
        "are still judged, and the exit code is 2 if any line failed. Blank lines are skipped.",
    )
)


def judge_command(
    file: Annotated[
        typer.FileText,
        typer.Argument(
            metavar="FILE",
            help="JSON lines to judge; stdin when omitted or '-'.",
            encoding="utf-8",
        ),
    ] = "-",  # type: ignore[assignment]
    catalog_dir: CatalogOption = None,
) -> None:
    """Judge JSON lines of samples; see _JUDGE_HELP."""
    catalog = _catalog_or_exit(catalog_dir)
    zone = ZoneInfo(Settings().timezone)
    failed = 0
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        try:
            verdict = _judge_line(line, catalog, zone)
        except SpotcheckError as exc:
            failed += 1
            typer.echo(f"line {number}: {exc}", err=True)
            continue
        typer.echo(json.dumps(verdict, ensure_ascii=False))
    if failed:
        typer.echo(f"{failed} line(s) could not be judged", err=True)
        raise typer.Exit(BAD_INPUT)


def list_specs(ctx: typer.Context, catalog_dir: CatalogOption = None) -> None:
    """List the specification catalog: spec id, product, number of test items."""
    ctx.obj = catalog_dir
    if ctx.invoked_subcommand is not None:
        return
    table = Table("spec", "product", "items")
    for spec in _catalog_or_exit(catalog_dir).specs():
        table.add_row(spec.id, spec.product, str(len(spec.items)))
    Console().print(table)


def show_spec(
    ctx: typer.Context,
    spec_id: Annotated[str, typer.Argument(metavar="ID", help="A spec id, e.g. GB19147-2016:VI:0")],
) -> None:
    """Show one spec: its items, units, limits, comparison method, and values to verify."""
    catalog = _catalog_or_exit(ctx.obj)
    try:
        spec = catalog.get(spec_id)
    except SpotcheckError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(BAD_INPUT) from None
    Console().print(_spec_table(spec))


def _spec_table(spec: Spec) -> Table:
    caption = f"{spec.product}, {spec.standard}" + (f". {spec.note}" if spec.note else "")
    table = Table(title=spec.id, caption=caption, caption_justify="left")
    table.add_column("code", no_wrap=True)
    table.add_column("name", overflow="fold")
    for header in ("unit", "limit", "comparison", "verify"):
        table.add_column(header)
    for item in spec.items:
        name = f"{item.name}\n{item.name_zh}" if item.name_zh else item.name
        table.add_row(
            item.code,
            name,
            item.unit or "—",
            item.limit.describe(),
            item.comparison.value,
            "verify" if item.verify else "",
        )
    return table


def _catalog_or_exit(folder: Path | None) -> Catalog:
    try:
        return load_catalog(folder)
    except SpotcheckError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(BAD_INPUT) from None


def register(app: typer.Typer) -> None:
    """Add the offline commands to the main app."""
    app.command("judge", help=_JUDGE_HELP)(judge_command)
    specs = typer.Typer(help="The specification catalog.")
    specs.callback(invoke_without_command=True)(list_specs)
    specs.command("show")(show_spec)
    app.add_typer(specs, name="specs")
