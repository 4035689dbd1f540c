"""The asyncpg store: migrations, batched idempotent writes, and the queries of the API."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg
import structlog

from adapters import outbox
from spotcheck.custody import initial_state
from spotcheck.errors import StoreError, TransientError
from spotcheck.events import DeadLetter, LabResult, SamplingTask, Verdict

log = structlog.get_logger(__name__)

_MIGRATION_LOCK = 0x5C0_7C4EC  # pg_advisory_lock key: one migrator at a time


# SQLSTATE classes and codes of failures that may pass if tried again: connection exceptions,
# transaction rollbacks (serialization, deadlock), insufficient resources (too many connections,
# disk full), operator intervention (shutdown, restart, a cancelled query), system errors, and a
# lock not available now.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_CODES = frozenset({"55P03"})


def translate(exc: BaseException) -> Exception:
    """A driver error as the project's own: transient ones may pass if tried again."""
    if isinstance(exc, StoreError | TransientError):
        return exc
    transient = (
        OSError,
        ConnectionError,
        asyncpg.exceptions.InterfaceError,
        TimeoutError,
    )
    state = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    if isinstance(exc, transient) or (
        isinstance(state, str) and (state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES)
    ):
        return TransientError(f"database unavailable: {exc}")
    return StoreError(f"database error: {exc}")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` as a text column takes it: NUL and lone surrogates written as \\uXXXX escapes."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True)
class StoredSample:
    """What the store knows of a sample: its task, accepted results in arrival order, last verdict."""

    task: SamplingTask
    results: list[LabResult]
    last_version: int


def _json(model: SamplingTask | LabResult | Verdict) -> str:
    return model.model_dump_json(by_alias=True)


async def _bulk_insert(
    conn: asyncpg.Connection,
    table: str,
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    on_conflict: str,
) -> None:
    """Many rows in two round trips: COPY into a staging table, then one INSERT … SELECT that
    keeps their order and resolves conflicts (must run inside a transaction)."""
    if not rows:
        return
    cols = ", ".join(columns)
    stage = f"stage_{table}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS"
        f" SELECT {cols}, 0::bigint AS ord FROM {table} WITH NO DATA"
    )
    await conn.copy_records_to_table(
        stage, records=[(*row, n) for n, row in enumerate(rows)], columns=(*columns, "ord")
    )
    await conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ORDER BY ord {on_conflict}")


class Store:
    """One asyncpg pool; every query of the platform goes through here."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self._url = url
        self._min = min_size
        self._max = max_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=self._min, max_size=self._max, command_timeout=60
            )
        except Exception as exc:  # noqa: BLE001 - translated at the edge
            raise translate(exc) from exc

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not started")
        return self._pool

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection in a transaction; driver errors come out as the project's own."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            raise translate(exc) from exc

    # --- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the SQL migrations not applied yet, in order; return the names applied."""
        files = sorted(
            (f for f in resources.files("adapters.migrations").iterdir() if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        applied: list[str] = []
        async with self._conn() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
                for f in files:
                    if f.name in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(f.read_text())
                        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", f.name)
                    applied.append(f.name)
                    log.info("migration applied", name=f.name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    # --- tasks ------------------------------------------------------------------------------

    async def next_task_number(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval("SELECT nextval('task_number_seq')"))

    async def save_tasks(self, tasks: Sequence[SamplingTask], conn: asyncpg.Connection | None = None) -> None:
        if not tasks:
            return
        rows = [
            (
                t.task_id,
                t.sample_id,
                t.enterprise_id,
                t.product,
                t.spec,
                list(t.items),
                t.lab_id,
                t.kind.value,
                t.campaign_id,
                t.created_at,
                t.sampled_at,
                _json(t),
            )
            for t in tasks
        ]
        sql = (
            "INSERT INTO tasks (task_id, sample_id, enterprise_id, product, spec, items, lab_id,"
            " kind, campaign_id, created_at, sampled_at, payload)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb) ON CONFLICT (task_id) DO NOTHING"
        )
        if conn is not None:
            await conn.executemany(sql, rows)
            return
        async with self._conn() as c:
            await c.executemany(sql, rows)

    async def known_task_ids(self, task_ids: Iterable[str]) -> set[str]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT task_id FROM tasks WHERE task_id = ANY($1)", list(task_ids))
        return {r["task_id"] for r in rows}

    # --- the verdict processor's state ------------------------------------------------------

    async def load_samples(
        self, task_ids: Iterable[str]
    ) -> tuple[dict[str, StoredSample], dict[str, list[LabResult]]]:
        """Stored samples for these tasks, and the pending results of tasks not stored yet."""
        ids = list(set(task_ids))
        async with self._conn() as conn:
            tasks = await conn.fetch("SELECT task_id, payload FROM tasks WHERE task_id = ANY($1)", ids)
            results = await conn.fetch(
                "SELECT task_id, state, payload FROM lab_results"
                " WHERE task_id = ANY($1) AND state IN ('accepted', 'pending') ORDER BY seq",
                ids,
            )
            versions = await conn.fetch(
                "SELECT task_id, max(version) AS v FROM verdicts WHERE task_id = ANY($1) GROUP BY task_id",
                ids,
            )
        by_task: dict[str, list[LabResult]] = {}
        pending: dict[str, list[LabResult]] = {}
        for r in results:
            target = by_task if r["state"] == "accepted" else pending
            target.setdefault(r["task_id"], []).append(LabResult.model_validate_json(r["payload"]))
        last = {r["task_id"]: int(r["v"]) for r in versions}
        samples = {
            r["task_id"]: StoredSample(
                task=SamplingTask.model_validate_json(r["payload"]),
                results=by_task.get(r["task_id"], []),
                last_version=last.get(r["task_id"], 0),
            )
            for r in tasks
        }
        return samples, pending

    async def write_batch(
        self,
        *,
        tasks: Sequence[SamplingTask],
        accepted: Sequence[LabResult],
        pending: Sequence[LabResult],
        verdicts: Sequence[Verdict],
        payloads: Mapping[str, str] | None = None,
        refused: Sequence[str] = (),
        messages: Sequence[outbox.Message] = (),
    ) -> None:
        """One transaction for a processed batch; re-running it changes nothing. `payloads` are
        results' JSON as received (else re-serialised); `refused`: ids of results the samples
        refused (a received one becomes rejected); `messages` go to the outbox with the rest."""
        raw = payloads or {}
        async with self.transaction() as conn:
            await self.save_tasks(tasks, conn)
            results = [("pending", r) for r in pending] + [("accepted", r) for r in accepted]
            await _bulk_insert(
                conn,
                "lab_results",
                ("result_id", "task_id", "lab_id", "item", "value", "unit", "amends", "state", "payload"),
                [
                    (
                        r.result_id,
                        r.task_id,
                        r.lab_id,
                        r.item,
                        str(r.value),
                        r.unit,
                        r.amends,
                        state,
                        raw.get(r.result_id) or _json(r),
                    )
                    for state, r in results
                ],
                "ON CONFLICT (result_id) DO UPDATE SET state = EXCLUDED.state"
                " WHERE lab_results.state IN ('pending', 'received')",
            )
            if refused:
                await conn.execute(
                    "UPDATE lab_results SET state = 'rejected'"
                    " WHERE result_id = ANY($1) AND state = 'received'",
                    list(refused),
                )
            await _bulk_insert(
                conn,
                "verdicts",
                (
                    "verdict_id",
                    "task_id",
                    "version",
                    "supersedes",
                    "outcome",
                    "spec",
                    "enterprise_id",
                    "product",
                    "lab_id",
                    "decided_at",
                    "payload",
                ),
                [
                    (
                        v.verdict_id,
                        v.task_id,
                        v.version,
                        v.supersedes,
                        v.outcome.value,
                        v.spec,
                        v.enterprise_id,
                        v.product,
                        v.lab_id,
                        v.decided_at,
                        _json(v),
                    )
                    for v in verdicts
                ],
                "ON CONFLICT (verdict_id) DO NOTHING",
            )
            await outbox.add(conn, messages)

    async def expire_pending(
        self,
        older_than: datetime,
        letters: Callable[[list[LabResult]], Sequence[outbox.Message]],
        limit: int = 1000,
    ) -> int:
        """Mark pending results older than the grace period rejected, with the dead letters
        `letters` makes of them in the outbox, in one transaction."""
        async with self.transaction() as conn:
            rows = await conn.fetch(
                "SELECT result_id, payload FROM lab_results WHERE state = 'pending'"
                " AND received_at < $1 ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                older_than,
                limit,
            )
            if not rows:
                return 0
            await outbox.add(conn, letters([LabResult.model_validate_json(r["payload"]) for r in rows]))
            await conn.execute(
                "UPDATE lab_results SET state = 'rejected' WHERE result_id = ANY($1)",
                [r["result_id"] for r in rows],
            )
        return len(rows)

    # --- dead letters and heartbeats --------------------------------------------------------

    async def save_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Store dead letters once each (by letter_id), whatever they hold: the payload's bytes in
        `raw`, the text columns with what PostgreSQL cannot store escaped."""
        if not letters:
            return
        async with self._conn() as conn:
            await conn.executemany(
                "INSERT INTO dead_letters (letter_id, source, key, reason, payload, raw, rejected_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (letter_id) DO NOTHING",
                [
                    (
                        storable(d.letter_id),
                        storable(d.source),
                        storable(d.key) if d.key is not None else None,
                        storable(d.reason),
                        storable(d.payload),
                        d.raw(),
                        d.rejected_at,
                    )
                    for d in letters
                ],
            )

    async def heartbeat(self, component: str, instance: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO heartbeats (component, instance, seen_at) VALUES ($1, $2, now())"
                " ON CONFLICT (component, instance) DO UPDATE SET seen_at = now()",
                component,
                instance,
            )

    async def live_components(self, within_seconds: float, *, since: datetime | None = None) -> set[str]:
        """Components with a heartbeat in the last `within_seconds`; with `since` (a time from
        `heartbeat_epoch`), only heartbeats written after it count."""
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT component FROM heartbeats WHERE seen_at > now() - make_interval(secs => $1)"
                " AND ($2::timestamptz IS NULL OR seen_at > $2)",
                within_seconds,
                since,
            )
        return {r["component"] for r in rows}

    async def heartbeat_epoch(self, *, forget_earlier: bool) -> datetime:
        """A run of `up` begins: the database's time now, after which its workers' heartbeats are
        written. With `forget_earlier` (`up` owns this database, so any heartbeat in it is an earlier
        run's) those are deleted, so that /healthz counts this run's workers only."""
        async with self._conn() as conn:
            if forget_earlier:
                await conn.execute("DELETE FROM heartbeats")
            now: datetime = await conn.fetchval("SELECT now()")
        return now

    async def save_pass_rates(self, rates: dict[str, dict[str, int]]) -> None:
        if not rates:
            return
        async with self._conn() as conn:
            await conn.executemany(
                "INSERT INTO pass_rates (product, qualified, unqualified, updated_at)"
                " VALUES ($1, $2, $3, now()) ON CONFLICT (product) DO UPDATE SET"
                " qualified = EXCLUDED.qualified, unqualified = EXCLUDED.unqualified,"
                " updated_at = EXCLUDED.updated_at",
                [(p, c.get("qualified", 0), c.get("unqualified", 0)) for p, c in rates.items()],
            )

    async def pass_rates(self) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT * FROM pass_rates ORDER BY product")
        return [
            {
                "product": r["product"],
                "qualified": r["qualified"],
                "unqualified": r["unqualified"],
                "pass_rate": round(r["qualified"] / max(r["qualified"] + r["unqualified"], 1), 4),
                "updated_at": r["updated_at"].isoformat(),
            }
            for r in rows
        ]

    # --- queries of the API -----------------------------------------------------------------

    async def task_view(self, task_id: str) -> dict[str, Any] | None:
        """The task, its results, verdicts and state as of one moment (one snapshot: never a verdict
        with results that do not look taken yet)."""
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            task = await conn.fetchval("SELECT payload FROM tasks WHERE task_id = $1", task_id)
            if task is None:
                return None
            results = await conn.fetch(
                "SELECT state, payload FROM lab_results WHERE task_id = $1 ORDER BY seq", task_id
            )
            verdicts = await conn.fetch(
                "SELECT payload FROM verdicts WHERE task_id = $1 ORDER BY version", task_id
            )
            state = await conn.fetchval("SELECT state FROM task_states WHERE task_id = $1", task_id)
        history = [json.loads(v["payload"]) for v in verdicts]
        return {
            "task": json.loads(task),
            "state": state or initial_state(SamplingTask.model_validate_json(task)).value,
            "results": [{**json.loads(r["payload"]), "state": r["state"]} for r in results],
            "verdict": history[-1] if history else None,
            "verdict_history": history,
        }

    async def list_verdicts(
        self,
        *,
        product: str | None = None,
        enterprise_id: str | None = None,
        outcome: str | None = None,
        spec: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all_versions: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("product", product),
            ("enterprise_id", enterprise_id),
            ("outcome", outcome),
            ("spec", spec),
        ):
            if value is not None:
                args.append(value)
                where.append(f"v.{column} = ${len(args)}")
        if since is not None:
            args.append(since)
            where.append(f"v.decided_at >= ${len(args)}")
        if until is not None:
            args.append(until)
            where.append(f"v.decided_at < ${len(args)}")
        if not all_versions:
            where.append(
                "NOT EXISTS (SELECT 1 FROM verdicts n WHERE n.task_id = v.task_id AND n.version > v.version)"
            )
        args.extend([limit, offset])
        sql = (
            "SELECT v.payload FROM verdicts v"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY v.decided_at DESC, v.verdict_id LIMIT ${len(args) - 1} OFFSET ${len(args)}"
        )
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *args)
        return [json.loads(r["payload"]) for r in rows]

    async def verdict_count(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM verdicts"))

    async def dead_letters(self, *, source: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT letter_id, source, key, reason, payload, rejected_at FROM dead_letters"
                " WHERE ($1::text IS NULL OR source = $1) ORDER BY rejected_at DESC LIMIT $2",
                source,
                limit,
            )
        return [{**dict(r), "rejected_at": r["rejected_at"].isoformat()} for r in rows]


class Heartbeat:
    """Writes a process's liveness for a component at most every `every` seconds."""

    def __init__(self, store: Store, component: str, instance: str, every: float = 5.0) -> None:
        self._store = store
        self._component = component
        self._instance = instance
        self._every = every
        self._last = -every

    async def maybe(self) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        try:
            await self._store.heartbeat(self._component, self._instance)
        except Exception as exc:  # noqa: BLE001 - health is reported, never fatal
            log.warning("heartbeat failed", component=self._component, error=str(exc))
