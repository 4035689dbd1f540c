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


class Unreachable(Exception):
    """The API did not answer at all (no server, a timeout, a broken connection)."""


def request(
    method: str,
    url: str,
    body: Any,
    bearer: str,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One HTTP request with a bearer token: (status, JSON answer or None). 4xx and 5xx are
    answers too; Unreachable when there is none."""
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _json_or_text(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json_or_text(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from None


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def error_text(answer: Any) -> str:
    """An error answer as one line: the message and the field at fault."""
    if isinstance(answer, dict) and "error" in answer:
        field = answer.get("field")
        return str(answer["error"]) + (f" (field: {field})" if field else "")
    return str(answer)[:300] if answer else "no detail"


def base_url(api: str | None = None) -> str:
    settings = Settings()
    return (api or f"http://{settings.http_host}:{settings.http_port}").rstrip("/")


def api_call(method: str, path: str, body: Any, api: str | None, token: str | None) -> Any:
    """One API request; a 4xx/5xx answer is printed with its field and ends the command."""
    base = base_url(api)
    try:
        status, answer = request(method, base + path, body, token or admin_token(Settings()))
    except Unreachable as exc:
        console.print(f"[red]cannot reach the API at {base}: {exc} (is `spotcheck up` running?)[/]")
        raise typer.Exit(1) from None
    if status >= 400:
        console.print(f"[red]{status}: {error_text(answer)}[/]")
        raise typer.Exit(1 if status >= 500 else 2)
    return answer


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))
