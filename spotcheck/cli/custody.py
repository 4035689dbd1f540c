"""`spotcheck inspectors token …`: inspectors' API tokens, through the running platform's API."""

from __future__ import annotations

import typer
from rich.console import Console

from spotcheck.cli.client import ApiOpt, TokenOpt, api_call, print_json

inspectors_app = typer.Typer(help="Inspectors' API tokens.", no_args_is_help=True)
token_app = typer.Typer(
    help="An inspector's API tokens (shown once when created; only a hash is kept).", no_args_is_help=True
)
inspectors_app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(inspector_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """A new token for an inspector of the directory; printed once, hand it over safely."""
    made = api_call("POST", f"/api/v1/inspectors/{inspector_id}/tokens", None, api, token)
    typer.echo(made["token"])
    Console(stderr=True).print(
        f"token {made['prefix']} for inspector {inspector_id}: shown once, only its hash is kept"
    )


@token_app.command("list")
def token_list(inspector_id: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """The inspector's tokens by prefix, with when they were created, last used and revoked."""
    print_json(api_call("GET", f"/api/v1/inspectors/{inspector_id}/tokens", None, api, token)["tokens"])


@token_app.command("revoke")
def token_revoke(inspector_id: str, prefix: str, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Revoke a token (the API trusts a verified token for a few seconds at most)."""
    print_json(api_call("DELETE", f"/api/v1/inspectors/{inspector_id}/tokens/{prefix}", None, api, token))
