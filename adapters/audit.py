"""The audit log in PostgreSQL: one append-only row per write through the API, and its queries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from adapters.store import Store, translate

SECRET_FIELDS = frozenset({"key", "key_hash", "secret", "token", "token_hash", "password"})
ACTOR_KINDS = ("admin", "lab", "inspector", "anonymous")


def scrub(value: Any) -> Any:
    """`value` without any field that holds a secret (a key, a key's hash, a center's secret), at
    any depth, and with NUL characters (which PostgreSQL cannot store) spelled out: what the audit
    log keeps of a thing."""
    if isinstance(value, dict):
        return {_text(k): scrub(v) for k, v in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return _text(value) if isinstance(value, str) else value


def _text(value: str) -> str:
    return value.replace("\x00", "\\x00")


@dataclass(frozen=True)
class Entry:
    """One write: who (kind and id), what (method, route, path, target), the outcome status, and
    what the thing was before and after when it changed."""

    request_id: str
    actor_kind: str
    actor_id: str | None
    method: str
    route: str
    path: str
    status: int
    target_id: str | None = None
    named_actor: str | None = None
    before: Any = None
    after: Any = None
    detail: Any = None
    remote: str | None = None
    client: str | None = None

    def to_log(self) -> dict[str, Any]:
        """The entry as a log line keeps it when the database cannot."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _jsonb(value: Any) -> str | None:
    return None if value is None else json.dumps(scrub(value), ensure_ascii=False, default=str)


_INSERT = (
    "INSERT INTO audit_log (request_id, actor_kind, actor_id, named_actor, method, route, path,"
    " target_id, status, before, after, detail, remote, client)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11::jsonb, $12::jsonb, $13, $14)"
    " RETURNING seq"
)


class AuditLog:
    """Appends entries (in the caller's transaction when given one) and finds them, newest first."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._store.pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc

    async def add(self, entry: Entry, conn: asyncpg.Connection | None = None) -> int:
        """Append `entry`; in `conn`'s transaction when given (it is kept only if that commits)."""
        args = (
            *(
                _text(v) if v is not None else None
                for v in (
                    entry.request_id,
                    entry.actor_kind,
                    entry.actor_id,
                    entry.named_actor,
                    entry.method,
                    entry.route,
                    entry.path[:2000],
                    entry.target_id,
                )
            ),
            entry.status,
            _jsonb(entry.before),
            _jsonb(entry.after),
            _jsonb(entry.detail),
            entry.remote,
            _text(entry.client[:300]) if entry.client else None,
        )
        if conn is not None:
            return int(await conn.fetchval(_INSERT, *args))
        async with self._conn() as c:
            return int(await c.fetchval(_INSERT, *args))

    async def find(
        self,
        *,
        actor_kind: str | None = None,
        actor_id: str | None = None,
        route: str | None = None,
        method: str | None = None,
        target_id: str | None = None,
        status: int | None = None,
        refused: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("actor_kind", actor_kind),
            ("actor_id", actor_id),
            ("route", route),
            ("method", method),
            ("target_id", target_id),
            ("status", status),
        ):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if refused is not None:
            where.append("status >= 400" if refused else "status < 400")
        bounds: tuple[tuple[str, datetime | int | None], ...] = (
            ("at >= ", since),
            ("at < ", until),
            ("seq < ", before_seq),
        )
        for condition, bound in bounds:
            if bound is not None:
                args.append(bound)
                where.append(f"{condition}${len(args)}")
        args.append(limit)
        sql = (
            "SELECT seq, at, request_id, actor_kind, actor_id, named_actor, method, route, path, target_id,"
            " status, before::text AS before, after::text AS after, detail::text AS detail, remote, client"
            " FROM audit_log"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY seq DESC LIMIT ${len(args)}"
        )
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *args)
        return [
            {
                **dict(r),
                "at": r["at"].isoformat(),
                "before": _loads(r["before"]),
                "after": _loads(r["after"]),
                "detail": _loads(r["detail"]),
            }
            for r in rows
        ]


def _loads(raw: str | None) -> Any:
    return None if raw is None else json.loads(raw)
