"""The center store: subscriptions of quality-testing centers, the delivery outbox and its attempts,
and the raw results held until their task is known. (Over 400 lines: one store per feature, and
these queries share the same tables and rules of order.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from adapters import outbox
from adapters.store import Store, _bulk_insert, translate
from spotcheck.centers import (
    CenterRequest,
    DeliveryAttempt,
    DeliveryState,
    EventKind,
    Filters,
    Subscription,
)
from spotcheck.errors import InvalidInput, NotFound
from spotcheck.events import Outcome

_HELD_LOCK = 0x5C0_4E1D  # pg_advisory_xact_lock key: one release or expiry of held results at a time


@dataclass(frozen=True)
class NewDelivery:
    """An event owed to a center, as the push consumer queues it."""

    delivery_id: str
    center_id: str
    task_id: str
    event: EventKind
    event_id: str
    payload: str  # the event's JSON as it was on the topic
    waits_for: tuple[str, ...] = ()  # deliveries to be delivered or failed before this one


@dataclass(frozen=True)
class HeldResult:
    """A raw lab result the push holds until its task is known (or the grace period is over)."""

    result_id: str
    task_id: str
    payload: str  # the result's JSON as it was on the topic
    received_at: datetime


@dataclass(frozen=True)
class Released:
    """A held result whose task is known now, with the task's spec."""

    result: HeldResult
    spec: str


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker holds until it records an attempt (or its lease runs out)."""

    seq: int
    delivery_id: str
    center_id: str
    task_id: str
    event: EventKind
    event_id: str
    payload: str
    round: int
    attempts: int  # made in this round before this one
    round_started_at: datetime | None  # the round's first attempt (None: this is it)
    url: str
    secret: str


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _center(row: asyncpg.Record, counts: dict[str, int] | None = None) -> dict[str, Any]:
    view = {
        "center_id": row["center_id"],
        "name": row["name"],
        "url": row["url"],
        "filters": json.loads(row["filters"]),
        "include_results": row["include_results"],
        "enabled": row["enabled"],
        "created_at": _iso(row["created_at"]),
        "disabled_at": _iso(row["disabled_at"]),
    }
    if counts is not None:
        view["deliveries"] = {s.value: counts.get(s.value, 0) for s in DeliveryState}
    return view


def _delivery(row: asyncpg.Record) -> dict[str, Any]:
    pending = row["state"] == DeliveryState.PENDING
    return {
        "delivery_id": row["delivery_id"],
        "task_id": row["task_id"],
        "event": row["event"],
        "event_id": row["event_id"],
        "state": row["state"],
        "round": row["round"],
        "attempts": row["attempts"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if pending else None,
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "created_at": _iso(row["created_at"]),
        "delivered_at": _iso(row["delivered_at"]),
        "failed_at": _iso(row["failed_at"]),
    }


_CENTER_COLUMNS = "center_id, name, url, filters, include_results, enabled, created_at, disabled_at"
_DELIVERY_COLUMNS = (
    "delivery_id, task_id, event, event_id, state, round, attempts, next_attempt_at,"
    " last_status, last_error, created_at, delivered_at, failed_at"
)


class CenterStore:
    """Queries of center push on the pool of a started Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._store.pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc

    # --- subscriptions ----------------------------------------------------------------------

    async def add(self, request: CenterRequest, secret: str) -> dict[str, Any]:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "INSERT INTO centers (center_id, name, url, secret, filters, include_results)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT (center_id) DO NOTHING"
                f" RETURNING {_CENTER_COLUMNS}",
                request.center_id,
                request.name,
                request.url,
                secret,
                request.filters.model_dump_json(),
                request.include_results,
            )
        if row is None:
            raise InvalidInput(f"center {request.center_id} exists already", field="center_id")
        return _center(row, {})

    async def centers(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_CENTER_COLUMNS} FROM centers ORDER BY center_id")
            counts = await conn.fetch(
                "SELECT center_id, state, count(*) AS n FROM deliveries GROUP BY center_id, state"
            )
        by_center: dict[str, dict[str, int]] = {}
        for c in counts:
            by_center.setdefault(c["center_id"], {})[c["state"]] = int(c["n"])
        return [_center(r, by_center.get(r["center_id"], {})) for r in rows]

    async def center(self, center_id: str) -> dict[str, Any]:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_CENTER_COLUMNS} FROM centers WHERE center_id = $1", center_id
            )
            counts = await conn.fetch(
                "SELECT state, count(*) AS n FROM deliveries WHERE center_id = $1 GROUP BY state", center_id
            )
        if row is None:
            raise NotFound(f"no center {center_id}")
        return _center(row, {c["state"]: int(c["n"]) for c in counts})

    async def disable(self, center_id: str) -> dict[str, Any]:
        async with self._conn() as conn:
            found = await conn.fetchval(
                "UPDATE centers SET enabled = false, disabled_at = coalesce(disabled_at, now())"
                " WHERE center_id = $1 RETURNING center_id",
                center_id,
            )
        if found is None:
            raise NotFound(f"no center {center_id}")
        return await self.center(center_id)

    async def subscriptions(self) -> list[Subscription]:
        """The enabled centers and what they asked for."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT center_id, filters, include_results FROM centers WHERE enabled ORDER BY center_id"
            )
        return [
            Subscription(
                center_id=r["center_id"],
                filters=Filters.model_construct(**_filters(json.loads(r["filters"]))),
                include_results=r["include_results"],
            )
            for r in rows
        ]

    async def task_context(self, task_ids: Iterable[str]) -> tuple[dict[str, str], set[str]]:
        """The spec of each stored task among these, and those of them with results held."""
        ids = list(set(task_ids))
        async with self._conn() as conn:
            specs = await conn.fetch("SELECT task_id, spec FROM tasks WHERE task_id = ANY($1)", ids)
            held = await conn.fetch("SELECT DISTINCT task_id FROM push_pending WHERE task_id = ANY($1)", ids)
        return {r["task_id"]: r["spec"] for r in specs}, {r["task_id"] for r in held}

    # --- the outbox -------------------------------------------------------------------------

    async def enqueue(self, deliveries: Sequence[NewDelivery], held: Sequence[HeldResult] = ()) -> None:
        """Queue deliveries in order and hold results, in one transaction; a delivery already
        queued or a result already held (a re-consumed event) is left as it is."""
        if not deliveries and not held:
            return
        async with self._conn() as conn, conn.transaction():
            await _bulk_insert(
                conn,
                "push_pending",
                ("result_id", "task_id", "payload", "received_at"),
                [(h.result_id, h.task_id, h.payload, h.received_at) for h in held],
                "ON CONFLICT (result_id) DO NOTHING",
            )
            await _insert_deliveries(conn, deliveries)

    async def release_held(
        self,
        route: Callable[[Sequence[Released]], Sequence[NewDelivery]],
        task_ids: Collection[str] | None = None,
        limit: int = 1000,
    ) -> Sequence[NewDelivery]:
        """Queue the held results whose task is stored now (of these tasks, or of all), oldest
        first: `route` says which deliveries they make. Releases are serialized (an advisory
        lock), so a task's results are queued in the order they were held. Returns what was
        queued (re-queued ones included)."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _HELD_LOCK)
            rows = await conn.fetch(
                "SELECT p.result_id, p.task_id, p.payload::text AS payload, p.received_at, t.spec"
                " FROM push_pending p JOIN tasks t ON t.task_id = p.task_id"
                " WHERE $1::text[] IS NULL OR p.task_id = ANY($1) ORDER BY p.seq LIMIT $2",
                list(task_ids) if task_ids is not None else None,
                limit,
            )
            if not rows:
                return ()
            queued = route([Released(_held(r), r["spec"]) for r in rows])
            await _insert_deliveries(conn, queued)
            await conn.execute(
                "DELETE FROM push_pending WHERE result_id = ANY($1)", [r["result_id"] for r in rows]
            )
        return queued

    async def expire_held(
        self,
        older_than: datetime,
        reject: Callable[[list[HeldResult]], Sequence[outbox.Message]],
        limit: int = 1000,
    ) -> int:
        """Drop results held since before `older_than` whose task is still not stored, with the
        messages `reject` makes of them (dead letters) in the outbox, in one transaction."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _HELD_LOCK)
            rows = await conn.fetch(
                "SELECT p.result_id, p.task_id, p.payload::text AS payload, p.received_at"
                " FROM push_pending p WHERE p.received_at < $1"
                " AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = p.task_id)"
                " ORDER BY p.seq LIMIT $2",
                older_than,
                limit,
            )
            if not rows:
                return 0
            await outbox.add(conn, reject([_held(r) for r in rows]))
            await conn.execute(
                "DELETE FROM push_pending WHERE result_id = ANY($1)", [r["result_id"] for r in rows]
            )
        return len(rows)

    async def due_centers(self) -> list[str]:
        """Centers with a pending delivery whose time has come."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT center_id FROM deliveries"
                " WHERE state = 'pending' AND next_attempt_at <= now()"
            )
        return [r["center_id"] for r in rows]

    async def claim(
        self, center_id: str, claim: str, limit: int, lease_seconds: float, patience_seconds: float
    ) -> list[Claimed]:
        """Take up to `limit` due deliveries of a center, oldest first, for `lease_seconds`.

        Each center receives a task's events in order, one at a time: a task's results in the
        order they were queued, its verdicts in theirs, each verdict after the results it lists
        (delivered or failed; one not queued is waited for up to `patience_seconds`). A result
        queued after a verdict goes after it, unless that verdict is still waiting for one of
        its results. A delivery taken by another worker is skipped (its lease moved it out of the
        due ones)."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "WITH due AS ("
                "  SELECT d.delivery_id FROM deliveries d"
                "  WHERE d.center_id = $1 AND d.state = 'pending' AND d.next_attempt_at <= now()"
                "  AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.center_id = d.center_id"
                "    AND e.task_id = d.task_id AND e.state = 'pending' AND e.event = 'lab-result'"
                "    AND e.seq < d.seq)"
                "  AND NOT EXISTS (SELECT 1 FROM (SELECT v.seq, v.waits_for, v.created_at FROM deliveries v"
                "      WHERE v.center_id = d.center_id AND v.task_id = d.task_id AND v.state = 'pending'"
                "      AND v.event = 'verdict' ORDER BY v.seq LIMIT 1) first"
                "    WHERE first.seq < d.seq AND (d.event = 'verdict'"
                "      OR NOT delivery_waits(first.waits_for, first.created_at, $5)))"
                "  AND (d.event = 'lab-result' OR NOT delivery_waits(d.waits_for, d.created_at, $5))"
                "  ORDER BY d.seq LIMIT $2 FOR UPDATE OF d SKIP LOCKED)"
                " UPDATE deliveries d SET claim = $3, next_attempt_at = now() + make_interval(secs => $4)"
                " FROM due, centers c"
                " WHERE d.delivery_id = due.delivery_id AND c.center_id = d.center_id"
                " RETURNING d.seq, d.delivery_id, d.center_id, d.task_id, d.event, d.event_id,"
                " d.payload::text AS payload, d.round, d.attempts, d.round_started_at, c.url, c.secret",
                center_id,
                limit,
                claim,
                lease_seconds,
                patience_seconds,
            )
        return sorted((Claimed(**dict(r)) for r in rows), key=lambda c: c.seq)

    async def record_attempt(
        self,
        attempt: DeliveryAttempt,
        claim: str,
        messages: Callable[[bool], Sequence[outbox.Message]],
    ) -> bool:
        """Store an attempt and its outcome for the delivery (if this worker still holds it), with
        the messages `messages(held)` makes (the attempt, a dead letter) in the outbox, in one
        transaction. Returns whether it was held."""
        state = {
            "delivered": DeliveryState.DELIVERED,
            "retrying": DeliveryState.PENDING,
            "failed": DeliveryState.FAILED,
        }[attempt.outcome]
        async with self._conn() as conn, conn.transaction():
            held = await conn.fetchval(
                "UPDATE deliveries SET state = $3, attempts = $4, claim = NULL,"
                " round_started_at = coalesce(round_started_at, $8),"
                " next_attempt_at = coalesce($5, next_attempt_at), last_status = $6, last_error = $7,"
                " delivered_at = CASE WHEN $3 = 'delivered' THEN $8::timestamptz END,"
                " failed_at = CASE WHEN $3 = 'failed' THEN $8::timestamptz END"
                " WHERE delivery_id = $1 AND claim = $2 RETURNING true",
                attempt.delivery_id,
                claim,
                state.value,
                attempt.attempt,
                attempt.next_attempt_at,
                attempt.status,
                attempt.error,
                attempt.attempted_at,
            )
            await conn.execute(
                "INSERT INTO delivery_attempts (attempt_id, delivery_id, center_id, round, attempt,"
                " outcome, status, error, duration_ms, attempted_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (attempt_id) DO NOTHING",
                attempt.attempt_id,
                attempt.delivery_id,
                attempt.center_id,
                attempt.round,
                attempt.attempt,
                attempt.outcome,
                attempt.status,
                attempt.error,
                attempt.duration_ms,
                attempt.attempted_at,
            )
            await outbox.add(conn, messages(bool(held)))
        return bool(held)

    # --- queries of the API -----------------------------------------------------------------

    async def deliveries(
        self, center_id: str, state: DeliveryState | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """A center's deliveries, newest first."""
        await self.center(center_id)  # NotFound for an unknown center
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE center_id = $1"
                " AND ($2::text IS NULL OR state = $2) ORDER BY seq DESC LIMIT $3",
                center_id,
                state.value if state is not None else None,
                limit,
            )
        return [_delivery(r) for r in rows]

    async def delivery(self, center_id: str, delivery_id: str) -> dict[str, Any]:
        """One delivery with the event it carries and every attempt made, oldest first."""
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_DELIVERY_COLUMNS}, payload::text AS payload FROM deliveries"
                " WHERE center_id = $1 AND delivery_id = $2",
                center_id,
                delivery_id,
            )
            attempts = await conn.fetch(
                "SELECT attempt_id, round, attempt, outcome, status, error, duration_ms, attempted_at"
                " FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempted_at, round, attempt",
                delivery_id,
            )
        if row is None:
            raise NotFound(f"center {center_id} has no delivery {delivery_id}")
        return {
            **_delivery(row),
            "data": json.loads(row["payload"]),
            "attempt_log": [{**dict(a), "attempted_at": _iso(a["attempted_at"])} for a in attempts],
        }

    async def redeliver(self, center_id: str, delivery_ids: Sequence[str] | None) -> list[str]:
        """Put failed deliveries back to pending for a new round, with a new retry budget (all of
        the center's when `delivery_ids` is None); their attempt history is kept."""
        await self.center(center_id)
        async with self._conn() as conn, conn.transaction():
            if delivery_ids is not None:
                rows = await conn.fetch(
                    "SELECT delivery_id, state FROM deliveries WHERE center_id = $1"
                    " AND delivery_id = ANY($2) FOR UPDATE",
                    center_id,
                    list(delivery_ids),
                )
                states = {r["delivery_id"]: r["state"] for r in rows}
                for wanted in delivery_ids:
                    if wanted not in states:
                        raise NotFound(f"center {center_id} has no delivery {wanted}")
                    if states[wanted] != DeliveryState.FAILED:
                        raise InvalidInput(
                            f"delivery {wanted} is {states[wanted]}; only failed ones are redelivered",
                            field="delivery_ids",
                        )
            rows = await conn.fetch(
                "UPDATE deliveries SET state = 'pending', attempts = 0, round = round + 1,"
                " next_attempt_at = now(), claim = NULL, failed_at = NULL, round_started_at = NULL"
                " WHERE center_id = $1 AND state = 'failed'"
                " AND ($2::text[] IS NULL OR delivery_id = ANY($2)) RETURNING delivery_id, seq",
                center_id,
                list(delivery_ids) if delivery_ids is not None else None,
            )
        return [r["delivery_id"] for r in sorted(rows, key=lambda r: r["seq"])]


async def _insert_deliveries(conn: asyncpg.Connection, deliveries: Sequence[NewDelivery]) -> None:
    """Queue deliveries in order (inside a transaction); one already queued is left as it is."""
    await _bulk_insert(
        conn,
        "deliveries",
        ("delivery_id", "center_id", "task_id", "event", "event_id", "payload", "waits_for"),
        [
            (d.delivery_id, d.center_id, d.task_id, d.event, d.event_id, d.payload, list(d.waits_for))
            for d in deliveries
        ],
        "ON CONFLICT (delivery_id) DO NOTHING",
    )


def _held(row: asyncpg.Record) -> HeldResult:
    return HeldResult(row["result_id"], row["task_id"], row["payload"], row["received_at"])


def _filters(raw: dict[str, Any]) -> dict[str, Any]:
    """Stored filters as Filters fields, without validating them against today's catalog again
    (a spec removed from the catalog since must not break the subscription)."""
    return {
        "products": tuple(raw.get("products", ())),
        "specs": tuple(raw.get("specs", ())),
        "districts": tuple(raw.get("districts", ())),
        "outcomes": tuple(Outcome(o) for o in raw.get("outcomes", ())),
    }
