"""The chain of custody in PostgreSQL: steps, each task's current state, and inspectors' API tokens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from adapters.labs import key_listing
from adapters.store import Store, translate
from spotcheck.custody import CustodyStep, TaskCustody, TaskState, initial_state
from spotcheck.errors import NotFound
from spotcheck.events import SamplingTask
from spotcheck.labs import key_matches, key_prefix, new_key

TOKEN_KIND = "scins"  # inspectors' tokens look like scins_<prefix>_<secret>


class CustodyStore:
    """Custody steps and states on the Store's pool. Verified tokens are trusted for `token_cache_seconds`."""

    def __init__(self, store: Store, token_cache_seconds: float = 10.0) -> None:
        self._store = store
        self._cache_for = token_cache_seconds
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (inspector id, until)

    def transaction(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """One connection in a transaction (the store's)."""
        return self._store.transaction()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._store.pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc

    # --- steps and states -------------------------------------------------------------------

    @staticmethod
    async def lock(conn: asyncpg.Connection, task_ids: Iterable[str]) -> None:
        """Hold these tasks until the transaction ends (in one order, so two writers never deadlock)."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(id, 7)) FROM"
            " (SELECT DISTINCT id FROM unnest($1::text[]) AS id ORDER BY id) ids",
            sorted(set(task_ids)),
        )

    async def load(
        self, task_ids: Iterable[str], conn: asyncpg.Connection | None = None
    ) -> dict[str, TaskCustody]:
        """The custody of each stored task among `task_ids`: its task, current state, inspectors and steps."""
        ids = sorted(set(task_ids))
        if conn is None:
            async with self._conn() as c:
                return await self._load(c, ids)
        return await self._load(conn, ids)

    @staticmethod
    async def _load(conn: asyncpg.Connection, ids: list[str]) -> dict[str, TaskCustody]:
        tasks = await conn.fetch("SELECT task_id, payload FROM tasks WHERE task_id = ANY($1)", ids)
        states = await conn.fetch(
            "SELECT task_id, state, assigned FROM task_states WHERE task_id = ANY($1)", ids
        )
        steps = await conn.fetch(
            "SELECT task_id, payload FROM custody_steps WHERE task_id = ANY($1) ORDER BY at, seq", ids
        )
        held = {r["task_id"]: r for r in states}
        out: dict[str, TaskCustody] = {}
        for row in tasks:
            task = SamplingTask.model_validate_json(row["payload"])
            custody = TaskCustody.start(task)
            stored = held.get(task.task_id)
            if stored is not None:
                custody.state = TaskState(stored["state"])
                custody.assigned = frozenset(stored["assigned"])
            out[task.task_id] = custody
        for row in steps:
            step = CustodyStep.model_validate_json(row["payload"])
            if step.task_id in out:
                out[step.task_id].by_id[step.step_id] = step
        return out

    @staticmethod
    async def save(
        conn: asyncpg.Connection, steps: Sequence[tuple[CustodyStep, str]], custodies: Iterable[TaskCustody]
    ) -> None:
        """Steps taken (each with its JSON as received) and the states they led to; a step_id stored
        before is left as it was."""
        if steps:
            await conn.executemany(
                "INSERT INTO custody_steps (step_id, task_id, step, actor, actor_role, at, payload)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT (step_id) DO NOTHING",
                [
                    (s.step_id, s.task_id, s.step.value, s.actor, s.actor_role.value, s.at, raw)
                    for s, raw in steps
                ],
            )
        rows = [(c.task.task_id, c.state.value, sorted(c.assigned)) for c in custodies]
        if rows:
            await conn.executemany(
                "INSERT INTO task_states (task_id, state, assigned) VALUES ($1, $2, $3)"
                " ON CONFLICT (task_id) DO UPDATE SET state = EXCLUDED.state,"
                " assigned = EXCLUDED.assigned, updated_at = now()",
                rows,
            )

    async def custody(self, task_id: str) -> TaskCustody:
        found = (await self.load([task_id])).get(task_id)
        if found is None:
            raise NotFound(f"no task {task_id}")
        return found

    async def inspector_tasks(
        self, inspector_id: str
    ) -> list[tuple[SamplingTask, TaskState, datetime | None]]:
        """The tasks `inspector_id` is assigned to now, oldest first: task, state, and when the
        sample was received (None if not yet)."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT t.payload, s.state,"
                " (SELECT min(c.at) FROM custody_steps c WHERE c.task_id = t.task_id"
                "  AND c.step = 'received') AS received_at"
                " FROM tasks t LEFT JOIN task_states s ON s.task_id = t.task_id"
                " WHERE ($1 = ANY(s.assigned)) OR (s.task_id IS NULL AND t.payload->'inspectors' ? $1)"
                " ORDER BY t.created_at, t.task_id",
                inspector_id,
            )
        out = []
        for r in rows:
            task = SamplingTask.model_validate_json(r["payload"])
            state = TaskState(r["state"]) if r["state"] is not None else initial_state(task)
            out.append((task, state, r["received_at"]))
        return out

    # --- inspectors' tokens -----------------------------------------------------------------

    async def _in_directory(self, conn: asyncpg.Connection, inspector_id: str) -> bool:
        try:
            found = await conn.fetchval(
                "SELECT 1 FROM inspectors WHERE inspector_id = $1 AND removed_at IS NULL", inspector_id
            )
        except asyncpg.UndefinedTableError:  # no directory yet: nobody is in it
            return False
        return found is not None

    async def create_token(self, inspector_id: str) -> dict[str, Any]:
        """A new token for an inspector of the directory: returned here and never again."""
        token, prefix, hashed = new_key(TOKEN_KIND)
        async with self._conn() as conn:
            if not await self._in_directory(conn, inspector_id):
                raise NotFound(f"inspector {inspector_id} is not in the directory (or was removed)")
            row = await conn.fetchrow(
                "INSERT INTO inspector_tokens (prefix, inspector_id, token_hash) VALUES ($1, $2, $3)"
                " RETURNING created_at",
                prefix,
                inspector_id,
                hashed,
            )
        return {
            "inspector_id": inspector_id,
            "prefix": prefix,
            "token": token,
            "created_at": row["created_at"].isoformat(),
        }

    async def tokens(self, inspector_id: str) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT prefix, created_at, revoked_at, last_used_at FROM inspector_tokens"
                " WHERE inspector_id = $1 ORDER BY created_at",
                inspector_id,
            )
        return key_listing(rows)

    async def revoke_token(self, inspector_id: str, prefix: str) -> None:
        async with self._conn() as conn:
            done = await conn.execute(
                "UPDATE inspector_tokens SET revoked_at = now() WHERE inspector_id = $1 AND prefix = $2"
                " AND revoked_at IS NULL",
                inspector_id,
                prefix,
            )
        if done.endswith(" 0"):
            raise NotFound(f"inspector {inspector_id} has no active token {prefix}")
        self._verified.clear()

    async def verify_token(self, token: str) -> str | None:
        """The inspector a token belongs to, if it is active and the inspector still in the directory."""
        prefix = key_prefix(token, TOKEN_KIND)
        if prefix is None:
            return None
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE inspector_tokens SET last_used_at = now() WHERE prefix = $1 AND revoked_at IS NULL"
                " RETURNING inspector_id, token_hash",
                prefix,
            )
            if row is None or not key_matches(token, row["token_hash"]):
                return None
            if not await self._in_directory(conn, row["inspector_id"]):
                return None
        self._verified[token] = (row["inspector_id"], time.monotonic() + self._cache_for)
        return str(row["inspector_id"])
