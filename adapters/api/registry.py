"""HTTP routes: registry."""

from __future__ import annotations

from aiohttp import web


def register(app: web.Application) -> None:
    """Adds this module's routes to `app`."""
