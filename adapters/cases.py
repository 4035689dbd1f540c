"""Enforcement cases in PostgreSQL: each case event stored once, each case as its events left it, the
queries of the API (cases, a case's history, the public list of final results) and referral counts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from adapters.store import Store
from spotcheck.case_model import ActionKind, CaseEvent
from spotcheck.errors import NotFound

_FAILING_FROM = frozenset({ActionKind.OPENED, ActionKind.RESULT_FINAL})

_UPSERT = (
    "INSERT INTO cases (case_id, enterprise_id, task_id, product, spec, state, last_seq, opened_at,"
    " updated_at, failing_items, objection_due, final_at, final_outcome, publish_by, referred)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, coalesce($9::text[], '{}'), $10, $11, $12, $13, $14)"
    " ON CONFLICT (case_id) DO UPDATE SET state = EXCLUDED.state, last_seq = EXCLUDED.last_seq,"
    " updated_at = EXCLUDED.updated_at,"
    " failing_items = CASE WHEN $9::text[] IS NULL THEN cases.failing_items ELSE EXCLUDED.failing_items END,"
    " objection_due = coalesce(EXCLUDED.objection_due, cases.objection_due),"
    " final_at = coalesce(EXCLUDED.final_at, cases.final_at),"
    " final_outcome = coalesce(EXCLUDED.final_outcome, cases.final_outcome),"
    " publish_by = coalesce(EXCLUDED.publish_by, cases.publish_by),"
    " referred = cases.referred OR EXCLUDED.referred"
    " WHERE cases.last_seq < EXCLUDED.last_seq"
)

_PUBLIC = """
SELECT * FROM (
  SELECT c.task_id, c.enterprise_id, c.product, c.spec, c.final_outcome AS outcome,
         CASE WHEN c.final_outcome = 'unqualified' THEN c.failing_items ELSE '{}' END AS failing_items,
         c.opened_at AS decided_at, c.final_at, c.publish_by
    FROM cases c WHERE c.final_at IS NOT NULL AND c.final_at <= $1
  UNION ALL
  SELECT v.task_id, v.enterprise_id, v.product, v.spec, v.outcome, '{}'::text[],
         v.decided_at, v.decided_at, NULL
    FROM (SELECT DISTINCT ON (task_id) * FROM verdicts ORDER BY task_id, version DESC) v
    JOIN tasks t ON t.task_id = v.task_id
   WHERE v.outcome = 'qualified' AND t.kind IN ('random', 'special') AND v.decided_at <= $1
     AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.task_id = v.task_id AND c.final_at IS NOT NULL)
) r
LEFT JOIN enterprises e ON e.enterprise_id = r.enterprise_id
WHERE ($2::text IS NULL OR r.product = $2)
ORDER BY r.final_at DESC, r.task_id LIMIT $3
"""


def _row(event: CaseEvent) -> tuple[Any, ...]:
    failing = list(event.failing_items) if event.kind in _FAILING_FROM else None
    notice = event.kind in (ActionKind.NOTICE_ISSUED, ActionKind.NOTICE_RECEIVED)
    final = event.kind is ActionKind.RESULT_FINAL
    return (
        event.case_id,
        event.enterprise_id,
        event.task_id,
        event.product,
        event.spec,
        event.state.value,
        event.seq,
        event.at,
        failing,
        event.deadline if notice else None,
        event.at if final else None,
        event.outcome.value if final and event.outcome is not None else None,
        event.deadline if final else None,
        event.kind is ActionKind.REFERRAL,
    )


class CaseStore:
    """The `cases` and `case_events` tables on the Store's pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @asynccontextmanager
    async def _within(self, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        """`conn` (in its caller's transaction), or a connection of the pool in a transaction of its own."""
        if conn is not None:
            yield conn
            return
        async with self._store.pool.acquire() as own, own.transaction():
            yield own

    async def save(self, events: Sequence[CaseEvent], conn: asyncpg.Connection | None = None) -> None:
        """Store events in order (in `conn`'s transaction when given); one stored already (a
        re-delivery) changes nothing."""
        if not events:
            return
        async with self._within(conn) as conn:
            for event in events:
                inserted = await conn.fetchval(
                    "INSERT INTO case_events (event_id, case_id, seq, enterprise_id, kind, state, at,"
                    " deadline, related_task_id, payload) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb)"
                    " ON CONFLICT DO NOTHING RETURNING event_id",
                    event.event_id,
                    event.case_id,
                    event.seq,
                    event.enterprise_id,
                    event.kind.value,
                    event.state.value,
                    event.at,
                    event.deadline,
                    event.related_task_id,
                    event.to_json().decode(),
                )
                if inserted is not None:
                    await conn.execute(_UPSERT, *_row(event))

    async def find(
        self, *, state: str | None = None, enterprise_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM cases WHERE ($1::text IS NULL OR state = $1)"
                " AND ($2::text IS NULL OR enterprise_id = $2) ORDER BY opened_at DESC, case_id LIMIT $3",
                state,
                enterprise_id,
                limit,
            )
        return [_case(r) for r in rows]

    async def get(self, case_id: str) -> dict[str, Any]:
        """The case with its full history (every event, in order)."""
        async with self._store.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM cases WHERE case_id = $1", case_id)
            if row is None:
                raise NotFound(f"no case {case_id}")
            events = await conn.fetch(
                "SELECT payload FROM case_events WHERE case_id = $1 ORDER BY seq", case_id
            )
        return _case(row) | {"events": [json.loads(e["payload"]) for e in events]}

    async def public_results(
        self, as_of: datetime, *, product: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Final results as they may be shown: no inspector, lab or internal id beyond the task number."""
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                _PUBLIC.replace("SELECT * FROM (", "SELECT r.*, e.name AS enterprise_name FROM (", 1),
                as_of,
                product,
                limit,
            )
        return [
            {
                "task_number": r["task_id"],
                "enterprise": r["enterprise_name"] or "(not in the directory)",
                "product": r["product"],
                "spec": r["spec"],
                "outcome": r["outcome"],
                "failing_items": list(r["failing_items"]),
                "decided_on": r["decided_at"].date().isoformat(),
                "final_on": r["final_at"].date().isoformat(),
                "publish_by": r["publish_by"].date().isoformat() if r["publish_by"] else None,
            }
            for r in rows
        ]

    async def referrals(self, since: datetime, until: datetime) -> dict[str, int]:
        """Cases referred for investigation per enterprise, opened within [since, until]."""
        async with self._store.pool.acquire() as conn:
            try:
                rows = await conn.fetch(
                    "SELECT enterprise_id, count(*) AS n FROM cases WHERE referred"
                    " AND opened_at > $1 AND opened_at <= $2 GROUP BY enterprise_id",
                    since,
                    until,
                )
            except asyncpg.UndefinedTableError:
                return {}
        return {r["enterprise_id"]: int(r["n"]) for r in rows}


def _case(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    out["failing_items"] = list(row["failing_items"])
    return out
