"""Overdue alerts in PostgreSQL: written by the store sink (once per alert_id), read by the API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adapters.store import Store
from spotcheck.deadlines import AlertKind, OverdueAlert


class AlertStore:
    """The `alerts` table on the Store's pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def save(self, alerts: Sequence[OverdueAlert]) -> None:
        """Store alerts; one already stored (a re-delivery, a second detection) is left as it was."""
        if not alerts:
            return
        async with self._store.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO alerts"
                " (alert_id, task_id, kind, due, detected_at, enterprise_id, lab_id, payload)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT (alert_id) DO NOTHING",
                [
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
                ],
            )

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
