"""The lab registry in PostgreSQL: labs, their API keys (hashes only), turnaround and backlog."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from adapters.store import Store, translate
from spotcheck.errors import NotFound, SpotcheckError
from spotcheck.events import SamplingTask
from spotcheck.labs import Lab, key_matches, key_prefix, new_key


def _lab(row: Any) -> Lab:
    return Lab(
        lab_id=row["lab_id"],
        name=row["name"],
        scope=json.loads(row["scope"]),
        daily_capacity=row["daily_capacity"],
        contact=row["contact"],
        enabled=row["enabled"],
    )


class LabExists(SpotcheckError):
    """A lab with this id is already in the registry (a change is an update, not an add)."""


UPDATABLE = ("name", "scope", "daily_capacity", "contact")  # what an update may change (not the id)


def _scope_json(lab: Lab) -> str:
    return json.dumps([e.model_dump(exclude_none=True) for e in lab.scope])


class LabStore:
    """Labs and keys on the Store's pool. Verified keys are trusted for `key_cache_seconds`."""

    def __init__(self, store: Store, key_cache_seconds: float = 10.0) -> None:
        self._store = store
        self._cache_for = key_cache_seconds
        self._verified: dict[str, tuple[str, float]] = {}  # key hash -> (lab id, until)

    @asynccontextmanager
    async def _conn(self, given: asyncpg.Connection | None = None) -> AsyncIterator[asyncpg.Connection]:
        """`given` (the caller's, in its transaction), else one of the pool; driver errors come out
        as the project's own."""
        if given is not None:
            yield given
            return
        try:
            async with self._store.pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc

    async def save(self, lab: Lab) -> Lab:
        """Add a lab, or update it (same lab_id): for loaders (the demo, tests); the API adds and
        updates explicitly."""
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO labs (lab_id, name, scope, daily_capacity, contact, enabled)"
                " VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (lab_id) DO UPDATE SET"
                " name = EXCLUDED.name, scope = EXCLUDED.scope, daily_capacity = EXCLUDED.daily_capacity,"
                " contact = EXCLUDED.contact, enabled = EXCLUDED.enabled, updated_at = now()",
                lab.lab_id,
                lab.name,
                _scope_json(lab),
                lab.daily_capacity,
                lab.contact,
                lab.enabled,
            )
        return lab

    async def add(self, lab: Lab, conn: asyncpg.Connection | None = None) -> Lab:
        """Add a new lab; LabExists if its id is taken."""
        async with self._conn(conn) as c:
            added = await c.fetchval(
                "INSERT INTO labs (lab_id, name, scope, daily_capacity, contact, enabled)"
                " VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (lab_id) DO NOTHING RETURNING lab_id",
                lab.lab_id,
                lab.name,
                _scope_json(lab),
                lab.daily_capacity,
                lab.contact,
                lab.enabled,
            )
        if added is None:
            raise LabExists(f"lab {lab.lab_id} is already in the registry; update it with PUT or PATCH")
        return lab

    async def update(self, lab: Lab, conn: asyncpg.Connection | None = None) -> Lab:
        """Change an existing lab's name, scope, capacity and contact to `lab`'s (enabled stays)."""
        async with self._conn(conn) as c:
            row = await c.fetchrow(
                "UPDATE labs SET name = $2, scope = $3::jsonb, daily_capacity = $4, contact = $5,"
                " updated_at = now() WHERE lab_id = $1 RETURNING *",
                lab.lab_id,
                lab.name,
                _scope_json(lab),
                lab.daily_capacity,
                lab.contact,
            )
        if row is None:
            raise NotFound(f"no lab {lab.lab_id}")
        return _lab(row)

    async def get(self, lab_id: str, conn: asyncpg.Connection | None = None, *, lock: bool = False) -> Lab:
        """The lab; with `lock` (in the caller's transaction) held until it ends."""
        async with self._conn(conn) as c:
            row = await c.fetchrow(
                "SELECT * FROM labs WHERE lab_id = $1" + (" FOR UPDATE" if lock else ""), lab_id
            )
        if row is None:
            raise NotFound(f"no lab {lab_id}")
        return _lab(row)

    async def all(self) -> list[Lab]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT * FROM labs ORDER BY lab_id")
        return [_lab(r) for r in rows]

    async def set_enabled(self, lab_id: str, enabled: bool, conn: asyncpg.Connection | None = None) -> Lab:
        async with self._conn(conn) as c:
            row = await c.fetchrow(
                "UPDATE labs SET enabled = $2, updated_at = now() WHERE lab_id = $1 RETURNING *",
                lab_id,
                enabled,
            )
        if row is None:
            raise NotFound(f"no lab {lab_id}")
        self._verified.clear()
        return _lab(row)

    # --- keys -------------------------------------------------------------------------------

    async def create_key(self, lab_id: str, conn: asyncpg.Connection | None = None) -> dict[str, Any]:
        """A new key for the lab: the key itself is returned here and never again."""
        await self.get(lab_id, conn)
        key, prefix, hashed = new_key()
        async with self._conn(conn) as c:
            row = await c.fetchrow(
                "INSERT INTO lab_keys (prefix, lab_id, key_hash) VALUES ($1, $2, $3) RETURNING created_at",
                prefix,
                lab_id,
                hashed,
            )
        return {"lab_id": lab_id, "prefix": prefix, "key": key, "created_at": row["created_at"].isoformat()}

    async def keys(self, lab_id: str) -> list[dict[str, Any]]:
        await self.get(lab_id)
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT prefix, created_at, revoked_at, last_used_at FROM lab_keys WHERE lab_id = $1"
                " ORDER BY created_at",
                lab_id,
            )
        return key_listing(rows)

    async def revoke_key(
        self, lab_id: str, prefix: str, conn: asyncpg.Connection | None = None
    ) -> dict[str, Any]:
        """Revoke an active key; returns it as listed now (prefix and times, never the hash)."""
        async with self._conn(conn) as c:
            row = await c.fetchrow(
                "UPDATE lab_keys SET revoked_at = now() WHERE lab_id = $1 AND prefix = $2"
                " AND revoked_at IS NULL RETURNING prefix, created_at, revoked_at, last_used_at",
                lab_id,
                prefix,
            )
        if row is None:
            raise NotFound(f"lab {lab_id} has no active key {prefix}")
        self._verified.clear()
        return key_listing([row])[0]

    async def rotate_key(
        self, lab_id: str, prefix: str, conn: asyncpg.Connection | None = None
    ) -> dict[str, Any]:
        """A new key, and the old one revoked (in one transaction when `conn` holds one)."""
        await self.revoke_key(lab_id, prefix, conn)
        return await self.create_key(lab_id, conn)

    async def verify_key(self, key: str) -> str | None:
        """The lab a key belongs to, if it is active and the lab enabled; None otherwise."""
        prefix = key_prefix(key)
        if prefix is None:
            return None
        cached = self._verified.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE lab_keys k SET last_used_at = now() FROM labs l"
                " WHERE k.prefix = $1 AND k.revoked_at IS NULL AND l.lab_id = k.lab_id AND l.enabled"
                " RETURNING k.lab_id, k.key_hash",
                prefix,
            )
        if row is None or not key_matches(key, row["key_hash"]):
            return None
        self._verified[key] = (row["lab_id"], time.monotonic() + self._cache_for)
        return str(row["lab_id"])

    # --- what the gateway and the stats need ------------------------------------------------

    async def tasks(self, task_ids: list[str]) -> dict[str, SamplingTask]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT payload FROM tasks WHERE task_id = ANY($1)", task_ids)
        tasks = [SamplingTask.model_validate_json(r["payload"]) for r in rows]
        return {t.task_id: t for t in tasks}

    async def stored_results(self, result_ids: list[str]) -> dict[str, str]:
        """result_id -> stored JSON, for the ids already received."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT result_id, payload::text AS payload FROM lab_results WHERE result_id = ANY($1)",
                result_ids,
            )
        return {r["result_id"]: r["payload"] for r in rows}

    async def result(self, result_id: str) -> dict[str, Any]:
        """What the platform stored of one result; NotFound if nothing."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT result_id, task_id, lab_id, state, received_at, payload::text AS payload"
                " FROM lab_results WHERE result_id = $1",
                result_id,
            )
        if row is None:
            raise NotFound(f"no result {result_id} is stored")
        return {
            "result_id": row["result_id"],
            "task_id": row["task_id"],
            "lab_id": row["lab_id"],
            "state": row["state"],
            "received_at": row["received_at"].isoformat(),
            "result": json.loads(row["payload"]),
        }

    async def stats(self, lab_id: str, since: datetime) -> dict[str, Any]:
        """Turnaround (task created -> verdict) of samples judged since `since`, and the backlog."""
        lab = await self.get(lab_id)
        async with self._conn() as conn:
            backlog = await conn.fetchrow(
                "SELECT count(*) AS n, min(t.created_at) AS oldest FROM tasks t WHERE t.lab_id = $1"
                " AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.task_id = t.task_id)",
                lab_id,
            )
            done = await conn.fetchrow(
                "SELECT count(*) AS n,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,"
                " percentile_cont(0.9) WITHIN GROUP (ORDER BY s) AS p90"
                " FROM (SELECT extract(epoch FROM v.decided_at - t.created_at) AS s"
                "  FROM verdicts v JOIN tasks t ON t.task_id = v.task_id"
                "  WHERE v.lab_id = $1 AND v.version = 1 AND v.decided_at >= $2) turnaround",
                lab_id,
                since,
            )
            results = await conn.fetchval(
                "SELECT count(*) FROM lab_results WHERE lab_id = $1 AND received_at >= $2", lab_id, since
            )
        return {
            "lab_id": lab_id,
            "since": since.isoformat(),
            "daily_capacity": lab.daily_capacity,
            "backlog": {"samples": backlog["n"], "oldest_task_created_at": _iso(backlog["oldest"])},
            "reported": {
                "samples": done["n"],
                "results": results,
                "turnaround_seconds_p50": _num(done["p50"]),
                "turnaround_seconds_p90": _num(done["p90"]),
            },
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _num(value: Any) -> float | None:
    return round(float(value), 1) if value is not None else None


def key_listing(rows: list[Any]) -> list[dict[str, Any]]:
    """Keys or tokens as listed to their owner: prefix, times, whether still active (never the hash)."""
    return [
        {
            "prefix": r["prefix"],
            "created_at": _iso(r["created_at"]),
            "revoked_at": _iso(r["revoked_at"]),
            "last_used_at": _iso(r["last_used_at"]),
            "active": r["revoked_at"] is None,
        }
        for r in rows
    ]
