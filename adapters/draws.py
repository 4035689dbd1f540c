"""Draws and campaigns in PostgreSQL: each draw with its inputs (plan, snapshot, seed, history), the
platform's facts a draw reads (last inspectors, failures, last checks), and the campaigns."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from adapters import outbox
from adapters.cases import CaseStore
from adapters.store import Store
from spotcheck.draws import DrawResult, Plan, Snapshot
from spotcheck.errors import InvalidInput, NotFound
from spotcheck.events import SamplingTask
from spotcheck.scheduling import Campaign, DrawRecord, DrawStatus, EnterpriseFacts

FAILURE_LOOKBACK = timedelta(days=3 * 365)
_CAMPAIGN_LOCK = 0x5C0_CA4B  # pg_advisory_lock key: one scheduler draws campaign rounds at a time

# Tasks of cancelled draws never happened: they count neither as a last check nor as last inspectors.
_LIVE_TASKS = (
    "SELECT t.* FROM tasks t LEFT JOIN draws d ON d.draw_id = t.payload->>'draw_id'"
    " WHERE d.status IS DISTINCT FROM 'cancelled'"
)


def _dump(model: Any) -> str:
    return str(model.model_dump_json(by_alias=True))


class DrawStore:
    """Draw records, their inputs and campaigns on the Store's pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def next_number(self) -> int:
        async with self._store.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT nextval('draw_number_seq')"))

    async def save(
        self,
        record: DrawRecord,
        *,
        requested: Plan,
        plan: Plan,
        snapshot: Snapshot,
        history: dict[str, list[str]],
        result: DrawResult,
        tasks: Sequence[SamplingTask],
        messages: Sequence[outbox.Message] = (),
    ) -> None:
        """The draw, its tasks and `messages` (to the outbox) in one transaction (a re-run of the
        same record is a no-op)."""
        async with self._store.transaction() as conn:
            try:
                await conn.execute(
                    "INSERT INTO draws (draw_id, plan_id, draw_date, campaign_id, seed, requested_plan, plan,"
                    " snapshot, history, result, result_digest, drawn_at, drawn_by, redraw_of, redraw_reason,"
                    " status, record) VALUES ($1,$2,$3,$4,$5,$6::jsonb,$7::jsonb,$8::jsonb,$9::jsonb,"
                    "$10::jsonb,$11,$12,$13,$14,$15,$16,$17::jsonb) ON CONFLICT (draw_id) DO NOTHING",
                    record.draw_id,
                    record.plan_id,
                    record.draw_date,
                    record.campaign_id,
                    record.seed,
                    _dump(requested),
                    _dump(plan),
                    _dump(snapshot),
                    json.dumps(history),
                    _dump(result),
                    record.result_digest,
                    record.drawn_at,
                    record.drawn_by,
                    record.redraw_of,
                    record.redraw_reason,
                    record.status.value,
                    _dump(record),
                )
            except asyncpg.UniqueViolationError as exc:
                if "campaign_round" in str(exc):
                    raise InvalidInput(
                        f"campaign {record.campaign_id} was already drawn for {record.draw_date}",
                        field="draw_date",
                    ) from None
                raise InvalidInput(
                    f"draw {record.redraw_of} was already redrawn", field="redraw_of"
                ) from None
            await self._store.save_tasks(tasks, conn)
            await outbox.add(conn, messages)

    async def record(self, draw_id: str) -> DrawRecord:
        return DrawRecord.model_validate_json(await self._column("record", draw_id))

    async def _column(self, column: str, draw_id: str) -> str:
        """One stored JSON column of a draw; NotFound if there is no such draw."""
        async with self._store.pool.acquire() as conn:
            raw = await conn.fetchval(f"SELECT {column}::text FROM draws WHERE draw_id = $1", draw_id)
        if raw is None:
            raise NotFound(f"no draw {draw_id}")
        return str(raw)

    async def inputs(self, draw_id: str) -> dict[str, Any]:
        """Everything needed to re-run the draw: plan, snapshot, seed, history, and what it drew."""
        async with self._store.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT plan, snapshot, seed, history, result, record FROM draws WHERE draw_id = $1", draw_id
            )
        if row is None:
            raise NotFound(f"no draw {draw_id}")
        return {
            "draw_id": draw_id,
            "seed": row["seed"],
            "plan": json.loads(row["plan"]),
            "snapshot": json.loads(row["snapshot"]),
            "history": json.loads(row["history"]),
            "result": json.loads(row["result"]),
            "record": json.loads(row["record"]),
        }

    async def requested_plan(self, draw_id: str) -> Plan:
        return Plan.model_validate_json(await self._column("requested_plan", draw_id))

    async def result(self, draw_id: str) -> DrawResult:
        return DrawResult.model_validate_json(await self._column("result", draw_id))

    async def records(self, *, campaign_id: str | None = None, limit: int = 100) -> list[DrawRecord]:
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT record FROM draws WHERE ($1::text IS NULL OR campaign_id = $1)"
                " ORDER BY drawn_at DESC, draw_id DESC LIMIT $2",
                campaign_id,
                limit,
            )
        return [DrawRecord.model_validate_json(r["record"]) for r in rows]

    async def cancel(self, record: DrawRecord, messages: Sequence[outbox.Message] = ()) -> None:
        """Store the cancelled record (the trigger refuses any other change and a second cancel) and
        `messages` (to the outbox) in one transaction."""
        async with self._store.transaction() as conn:
            await conn.execute(
                "UPDATE draws SET status = $2, cancelled_at = $3, cancel_reason = $4, record = $5::jsonb"
                " WHERE draw_id = $1",
                record.draw_id,
                DrawStatus.CANCELLED.value,
                record.cancelled_at,
                record.cancel_reason,
                _dump(record),
            )
            await outbox.add(conn, messages)

    async def task_states(self, task_ids: Sequence[str]) -> dict[str, str | None]:
        """The custody state of each task where one is recorded (None: never moved since created)."""
        async with self._store.pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass('task_states')") is None:
                return dict.fromkeys(task_ids)
            rows = await conn.fetch(
                "SELECT task_id, state FROM task_states WHERE task_id = ANY($1)", list(task_ids)
            )
        found = {r["task_id"]: r["state"] for r in rows}
        return {t: found.get(t) for t in task_ids}

    async def tasks(self, task_ids: Sequence[str]) -> list[SamplingTask]:
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT payload FROM tasks WHERE task_id = ANY($1) ORDER BY task_id", list(task_ids)
            )
        return [SamplingTask.model_validate_json(r["payload"]) for r in rows]

    # --- the platform's facts a draw reads --------------------------------------------------

    async def last_inspectors(self) -> dict[str, list[str]]:
        """Each enterprise's inspectors at its last check with inspectors (they may not go again)."""
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT DISTINCT ON (enterprise_id) enterprise_id, payload->'inspectors' AS inspectors"
                f" FROM ({_LIVE_TASKS}) t WHERE jsonb_array_length(payload->'inspectors') > 0"
                " ORDER BY enterprise_id, created_at DESC"
            )
        return {r["enterprise_id"]: sorted(json.loads(r["inspectors"])) for r in rows}

    async def enterprise_facts(self, as_of: datetime, zone: str) -> dict[str, EnterpriseFacts]:
        """Unqualified verdicts in force over the lookback period (plus the cases referred for
        investigation), and the local day of the last check."""
        async with self._store.pool.acquire() as conn:
            failures = await conn.fetch(
                "SELECT enterprise_id, count(*) AS n FROM ("
                "  SELECT DISTINCT ON (task_id) enterprise_id, outcome FROM verdicts"
                "  WHERE decided_at > $1 AND decided_at <= $2 ORDER BY task_id, version DESC"
                ") v WHERE outcome = 'unqualified' GROUP BY enterprise_id",
                as_of - FAILURE_LOOKBACK,
                as_of,
            )
            checks = await conn.fetch(
                f"SELECT enterprise_id, max((coalesce(sampled_at, created_at) AT TIME ZONE $2)::date) AS day"
                f" FROM ({_LIVE_TASKS}) t WHERE created_at <= $1 GROUP BY enterprise_id",
                as_of,
                zone,
            )
        facts: dict[str, dict[str, Any]] = {}
        for r in failures:
            facts.setdefault(r["enterprise_id"], {})["failures"] = int(r["n"])
        # a case referred for investigation (critical failure, repeat offender) weighs as one more failure
        for eid, n in (await CaseStore(self._store).referrals(as_of - FAILURE_LOOKBACK, as_of)).items():
            known = facts.setdefault(eid, {})
            known["failures"] = known.get("failures", 0) + n
        for r in checks:
            facts.setdefault(r["enterprise_id"], {})["last_check"] = r["day"]
        return {eid: EnterpriseFacts(**values) for eid, values in facts.items()}

    # --- campaigns --------------------------------------------------------------------------

    async def save_campaign(self, campaign: Campaign) -> None:
        async with self._store.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO campaigns (campaign_id, record, active) VALUES ($1, $2::jsonb, $3)"
                " ON CONFLICT (campaign_id) DO UPDATE SET record = EXCLUDED.record,"
                " active = EXCLUDED.active, updated_at = now()",
                campaign.campaign_id,
                _dump(campaign),
                campaign.active,
            )

    async def campaign(self, campaign_id: str) -> Campaign:
        async with self._store.pool.acquire() as conn:
            raw = await conn.fetchval("SELECT record FROM campaigns WHERE campaign_id = $1", campaign_id)
        if raw is None:
            raise NotFound(f"no campaign {campaign_id}")
        return Campaign.model_validate_json(raw)

    async def campaigns(self) -> list[Campaign]:
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch("SELECT record FROM campaigns ORDER BY campaign_id")
        return [Campaign.model_validate_json(r["record"]) for r in rows]

    async def redrawn_by(self, draw_id: str) -> str | None:
        async with self._store.pool.acquire() as conn:
            found = await conn.fetchval("SELECT draw_id FROM draws WHERE redraw_of = $1", draw_id)
        return str(found) if found is not None else None

    async def round_drawn(self, campaign_id: str, day: date) -> bool:
        async with self._store.pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM draws WHERE campaign_id = $1 AND draw_date = $2 AND status = 'published'",
                campaign_id,
                day,
            )
        return found is not None

    @asynccontextmanager
    async def campaign_lock(self) -> AsyncIterator[bool]:
        """Whether this process holds the campaign lock (one scheduler draws rounds at a time)."""
        async with self._store.pool.acquire() as conn:
            mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _CAMPAIGN_LOCK))
            try:
                yield mine
            finally:
                if mine:
                    await conn.execute("SELECT pg_advisory_unlock($1)", _CAMPAIGN_LOCK)

    async def last_rounds(self) -> dict[str, date]:
        """Each campaign's latest round drawn; a cancelled round counts too (a planner redraws it)."""
        async with self._store.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT campaign_id, max(draw_date) AS day FROM draws"
                " WHERE campaign_id IS NOT NULL GROUP BY campaign_id"
            )
        return {r["campaign_id"]: r["day"] for r in rows}
