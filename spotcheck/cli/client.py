"""The CLI's HTTP client for a running platform: base URL and token from the settings."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console

from spotcheck.settings import Settings

console = Console(stderr=True)

ApiOpt = Annotated[str | None, typer.Option("--api", help="API base URL (default: the settings')")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="bearer token (default: the admin token)")]


def admin_token(settings: Settings) -> str:
    """The admin token: SPOTCHECK_ADMIN_TOKEN, else the one `spotcheck up` keeps in the state folder."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.state_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    console.print(
        f"[red]no admin token: set SPOTCHECK_ADMIN_TOKEN or run `spotcheck up` (it writes {path})[/]"
    )
    raise typer.Exit(2)


def api_call(method: str, path: str, body: Any, api: str | None, token: str | None) -> Any:
    """One API request; a 4xx/5xx answer is printed with its field and ends the command."""
    settings = Settings()
    base = api or f"http://{settings.http_host}:{settings.http_port}"
    bearer = token or admin_token(settings)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            parsed = json.loads(detail)
            detail = parsed.get("error", detail) + (
                f" (field: {parsed['field']})" if parsed.get("field") else ""
            )
        except (ValueError, AttributeError):
            pass
        console.print(f"[red]{exc.code}: {detail}[/]")
        raise typer.Exit(1 if exc.code >= 500 else 2) from None
    except urllib.error.URLError as exc:
        console.print(f"[red]cannot reach the API at {base}: {exc.reason} (is `spotcheck up` running?)[/]")
        raise typer.Exit(1) from None


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))
