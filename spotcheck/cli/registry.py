"""`spotcheck registry …`: the directory of enterprises, inspectors and products."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spotcheck.cli.client import (
    ApiOpt,
    TokenOpt,
    Unreachable,
    admin_token,
    api_call,
    base_url,
    error_text,
    request,
)
from spotcheck.cli.imports import _progress
from spotcheck.errors import InvalidInput
from spotcheck.registry import COLUMNS, PLURALS, Record, RecordKind, from_csv_row, record_json, to_csv_row
from spotcheck.settings import Settings

console = Console(stderr=True)
OK, UNREACHABLE, REJECTED = 0, 1, 2
BATCH = 500
CHANGED_BY = "X-Spotcheck-Changed-By"

registry_app = typer.Typer(help="The directory: enterprises, inspectors, products.", no_args_is_help=True)


class Kind(StrEnum):
    ENTERPRISES = "enterprises"
    INSPECTORS = "inspectors"
    PRODUCTS = "products"


@dataclass
class Row:
    """One row of an import file: the JSON object sent, or what was wrong with it here."""

    line: int
    body: Any
    error: str | None = None
    field: str | None = None


@dataclass
class Report:
    label: str
    rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[int, str, str | None]] = field(default_factory=list)

    def summary(self) -> str:
        c = self.counts
        return (
            f"{self.label}: {self.rows} row{'' if self.rows == 1 else 's'}: {c['created']} created, "
            f"{c['updated']} updated, {c['unchanged']} unchanged, {len(self.problems)} rejected"
        )


class ImportFailed(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def read_rows(path: Path, kind: RecordKind) -> list[Row]:
    """The rows of a CSV (header line first, lists separated by ';') or JSON-lines file."""
    text = path.read_text(encoding="utf-8-sig")
    rows: list[Row] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        start = 2
        for raw in reader:
            try:
                rows.append(Row(start, from_csv_row(kind, raw)))
            except InvalidInput as exc:
                rows.append(Row(start, json.dumps(raw, ensure_ascii=False), str(exc), exc.field))
            start = reader.line_num + 1
        return rows
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise ImportFailed(f"{path}: a .csv, .jsonl or .ndjson file, please", REJECTED)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(Row(n, json.loads(line)))
        except ValueError as exc:
            rows.append(Row(n, line, f"not valid JSON: {exc}", "(line)"))
    return rows


def send(
    kind: RecordKind, rows: list[Row], report: Report, api: str | None, token: str | None, batch: int
) -> None:
    """Posts the rows in batches (bad ones too, so the platform keeps them as dead letters) and
    settles each row's outcome into `report`."""
    base = base_url(api)
    bearer = token or admin_token(Settings())
    plural = f"{kind}s"
    report.rows += len(rows)
    with _progress() as progress:
        bar = progress.add_task(report.label, total=len(rows))
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            try:
                status, answer = request(
                    "POST",
                    f"{base}/api/v1/registry/{plural}",
                    [r.body for r in chunk],
                    bearer,
                    {CHANGED_BY: f"import {report.label}"[:150]},
                    timeout=120,
                )
            except Unreachable as exc:
                raise ImportFailed(
                    f"cannot reach the API at {base}: {exc} (is `spotcheck up` running?)", 1
                ) from None
            if status not in (200, 422) or not isinstance(answer, dict) or "outcomes" not in answer:
                hint = " (try a smaller --batch-size)" if status == 413 else ""
                code = UNREACHABLE if status >= 500 else REJECTED
                raise ImportFailed(f"{status}: {error_text(answer)}{hint}", code)
            for row, outcome in zip(chunk, answer["outcomes"], strict=True):
                if row.error is not None:
                    report.problems.append((row.line, row.error, row.field))
                elif outcome["status"] == "rejected":
                    report.problems.append((row.line, outcome.get("error", "rejected"), outcome.get("field")))
                else:
                    report.counts[outcome["status"]] += 1
            progress.advance(bar, len(chunk))


def _print(report: Report) -> None:
    typer.echo(report.summary(), err=True)
    for line, reason, fld in report.problems:
        typer.echo(f"{report.label}:{line}: {reason}" + (f" ({fld})" if fld else ""), err=True)


KindOpt = Annotated[Kind, typer.Option("--kind", help="what the files hold")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=1000, help="records per request")]


@registry_app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help=".csv, .jsonl or .ndjson", exists=True, dir_okay=False)],
    kind: KindOpt,
    batch_size: BatchOpt = BATCH,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add or update directory records from files (upsert by id; safe to run again: unchanged
    records stay as they are). CSV: a header row with the field names, lists separated by ';'.
    Bad rows are reported as FILE:LINE: reason (field) and kept by the platform as dead letters.
    Exit code: 0 every row taken, 2 some row rejected, 1 the API could not be reached."""
    record_kind = PLURALS[kind.value]
    reports: list[Report] = []
    try:
        for path in files:
            report = Report(str(path))
            reports.append(report)
            send(record_kind, read_rows(path, record_kind), report, api, token, batch_size)
    except ImportFailed as exc:
        for report in reports[:-1]:
            _print(report)
        console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        console.print(f"[red]cannot read {escape(str(exc.filename))}: {exc.strerror}[/]", highlight=False)
        raise typer.Exit(REJECTED) from None
    for report in reports:
        _print(report)
    raise typer.Exit(REJECTED if any(r.problems for r in reports) else OK)


def _cells(kind: Kind, record: dict[str, Any]) -> list[str]:
    def joined(name: str) -> str:
        return "; ".join(record.get(name) or [])

    if kind is Kind.ENTERPRISES:
        return [
            record["enterprise_id"],
            record["name"],
            record["district"],
            record["kind"],
            joined("products"),
            record["licence_status"],
            joined("supplied_by"),
        ]
    if kind is Kind.INSPECTORS:
        return [
            record["inspector_id"],
            record["name"],
            record["unit"],
            record["district"],
            joined("excluded_enterprises"),
        ]
    return [
        record["product"],
        record.get("name_zh") or "",
        record.get("display_name") or "",
        joined("spec_ids"),
    ]


HEADERS = {
    Kind.ENTERPRISES: ("id", "name", "district", "kind", "products", "licence", "supplied by"),
    Kind.INSPECTORS: ("id", "name", "unit", "district", "excluded"),
    Kind.PRODUCTS: ("product", "name_zh", "display name", "spec ids"),
}


@registry_app.command("list")
def list_(
    kind: Annotated[Kind, typer.Argument(help="enterprises, inspectors or products")],
    q: Annotated[str | None, typer.Option("--q", help="a substring of the name or id")] = None,
    district: Annotated[str | None, typer.Option(help="district, exactly")] = None,
    enterprise_kind: Annotated[
        str | None, typer.Option("--kind", help="producer, depot, filling-station or seller")
    ] = None,
    product: Annotated[str | None, typer.Option(help="enterprises making or selling it")] = None,
    supplied_by: Annotated[str | None, typer.Option(help="enterprises supplied by this one")] = None,
    unit: Annotated[str | None, typer.Option(help="inspectors of this unit (a substring)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON answer")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Search the directory."""
    given = {
        "q": q,
        "district": district,
        "kind": enterprise_kind,
        "product": product,
        "supplied_by": supplied_by,
        "unit": unit,
        "limit": limit,
        "offset": offset,
    }
    query = urlencode({k: v for k, v in given.items() if v is not None})
    answer = api_call("GET", f"/api/v1/{kind.value}?{query}", None, api, token)
    if as_json:
        typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))
        return
    table = Table(*HEADERS[kind])
    table.columns[0].no_wrap = True
    for record in answer[kind.value]:
        table.add_row(*_cells(kind, record))
    Console().print(table)
    console.print(f"{answer['count']} shown of {answer['total']}")


@registry_app.command("show")
def show(
    record_id: Annotated[str, typer.Argument(help="a credit code, inspector id or product name")],
    kind: Annotated[Kind | None, typer.Option("--kind", help="default: guessed from the id")] = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """A record of the directory with every version of it."""
    kinds = [kind] if kind else list(Kind)
    bearer = token or admin_token(Settings())
    base = base_url(api)
    for k in kinds:
        try:
            status, answer = request(
                "GET", f"{base}/api/v1/{k.value}/{quote(record_id, safe='')}", None, bearer
            )
        except Unreachable as exc:
            console.print(f"[red]cannot reach the API at {base}: {exc}[/]")
            raise typer.Exit(UNREACHABLE) from None
        if status == 200:
            typer.echo(json.dumps({"kind": k.value[:-1], **answer}, ensure_ascii=False, indent=2))
            return
        if status != 404:
            console.print(f"[red]{status}: {error_text(answer)}[/]")
            raise typer.Exit(UNREACHABLE if status >= 500 else REJECTED)
    console.print(f"[red]{escape(record_id)} is not in the directory[/]")
    raise typer.Exit(REJECTED)


@registry_app.command("remove")
def remove(
    kind: Annotated[Kind, typer.Argument()],
    record_id: str,
    reason: Annotated[str, typer.Option(help="why, kept in the history")],
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Take a record out of the directory; its history stays."""
    path = f"/api/v1/registry/{kind.value}/{quote(record_id, safe='')}?{urlencode({'reason': reason})}"
    typer.echo(json.dumps(api_call("DELETE", path, None, api, token), ensure_ascii=False, indent=2))


@registry_app.command("as-of")
def as_of(
    at: Annotated[str, typer.Argument(help="ISO time with offset, e.g. 2026-11-01T09:00:00+08:00")],
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """How many enterprises, inspectors and products were in the directory at a time, and the
    digest of that snapshot (the one a draw then would have used)."""
    answer = api_call("GET", f"/api/v1/registry/as-of?{urlencode({'at': at})}", None, api, token)
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=2))


def write_csv(path: Path, kind: RecordKind, records: tuple[Record, ...]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(COLUMNS[kind]))
        writer.writeheader()
        for record in records:
            writer.writerow(to_csv_row(record))


@registry_app.command("demo")
def demo(
    out: Annotated[
        Path | None, typer.Option(help="write enterprises.csv, inspectors.csv, products.csv here")
    ] = None,
    seed: Annotated[int, typer.Option(help="the same seed gives the same directory")] = 2026,
    load: Annotated[bool, typer.Option("--load", help="import it into the running platform")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """A realistic demo directory of Dongying (about 3000 enterprises, 100 inspectors)."""
    from spotcheck.registry_demo import generate

    if out is None and not load:
        raise typer.BadParameter("give --out DIR, --load or both")
    made = generate(seed)
    parts: list[tuple[RecordKind, tuple[Record, ...]]] = [
        ("product", made.products),
        ("enterprise", made.enterprises),
        ("inspector", made.inspectors),
    ]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for kind, records in parts:
            write_csv(out / f"{kind}s.csv", kind, records)
            console.print(f"{out / f'{kind}s.csv'}: {len(records)} {kind}s")
    if not load:
        return
    reports = []
    try:
        for kind, records in parts:
            report = Report(f"demo {kind}s")
            rows = [Row(n + 2, record_json(r)) for n, r in enumerate(records)]
            send(kind, rows, report, api, token, BATCH)
            reports.append(report)
    except ImportFailed as exc:
        console.print(f"[red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    for report in reports:
        _print(report)
    raise typer.Exit(REJECTED if any(r.problems for r in reports) else OK)
