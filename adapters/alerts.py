"""Overdue alerts in PostgreSQL: stored once per alert_id (by the stream processor that raises them, with
their message in the outbox, and again harmlessly by the store sink), read by the API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from adapters.store import Store
from spotcheck.deadlines import AlertKind, OverdueAlert


class AlertStore:
    """The `alerts` table on the Store's pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def save(self, alerts: Sequence[OverdueAlert], conn: asyncpg.Connection | None = None) -> set[str]:
        """Store alerts (in `conn`'s transaction when given); one already stored (a re-delivery, a
        second detection) is left as it was. Returns the ids of those stored now."""
        if not alerts:
            return set()
        columns = list(
            zip(
                *(
                    (
                        a.alert_id,
                        a.task_id,
                        a.kind.value,
                        a.due,
                        a.detected_at,
                        a.enterprise_id,
                        a.lab_id,
                        a.to_json().decode(),
                    )
                    for a in alerts
                ),
                strict=True,
            )
        )
        sql = (
            "INSERT INTO alerts (alert_id, task_id, kind, due, detected_at, enterprise_id, lab_id, payload)"
            " SELECT a, t, k, d, x, e, l, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::timestamptz[], $5::timestamptz[], $6::text[], $7::text[], $8::text[])"
            " AS u(a, t, k, d, x, e, l, p)"
            " ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id"
        )
        if conn is not None:
            rows = await conn.fetch(sql, *(list(c) for c in columns))
        else:
            async with self._store.pool.acquire() as own:
                rows = await own.fetch(sql, *(list(c) for c in columns))
        return {r["alert_id"] for r in rows}

    async def list(
        self,
        *,
        kind: AlertKind | None = None,
        task_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Alerts, newest detection first, as published (alert/1)."""
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT payload FROM alerts WHERE ($1::text IS NULL OR kind = $1)"
                " AND ($2::text IS NULL OR task_id = $2)"
                " AND ($3::timestamptz IS NULL OR detected_at >= $3)"
                " ORDER BY detected_at DESC, alert_id LIMIT $4",
                kind.value if kind is not None else None,
                task_id,
                since,
                limit,
            )
        return [json.loads(r["payload"]) for r in rows]
