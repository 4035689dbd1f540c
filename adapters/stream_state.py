"""The stream processor's state in PostgreSQL: the facts its tables are rebuilt from (tasks, custody
steps, verdicts, alerts) and the snapshots of its enforcement cases, written with their effects."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from adapters.store import Store
from spotcheck.custody import CustodyStep
from spotcheck.events import SamplingTask, Verdict

APPLIED_KEPT = 200
"""The latest verdict and refusal inputs a snapshot remembers (a rebuild feeds the others again)."""

_ENDS = ("refused", "not-found", "not-sampleable", "cancelled", "closed")
_CASE_VERDICT = "(v.outcome = 'unqualified' OR v.version > 1 OR v.task_id ~ '\\.(R|F[0-9])$')"


@dataclass
class TaskFacts:
    """What PostgreSQL knows of a task's deadlines: the task, its accepted custody steps (in time
    order), the ids of the alerts stored, and its first verdict that is not incomplete."""

    task: SamplingTask
    steps: list[CustodyStep] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    verdict: tuple[str, datetime] | None = None  # (verdict_id, decided_at)


@dataclass(frozen=True)
class HeldSnapshot:
    """An enterprise's case snapshot, locked for the transaction: its revision (0 when there is none),
    the inputs it applied, and its state when it is newer than the revision the caller knows."""

    revision: int
    applied: tuple[str, ...]
    state: dict[str, Any] | None


class StreamRecord:
    """Reads for the stream processor's rebuilds; the case snapshots it writes with their effects."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # --- deadlines --------------------------------------------------------------------------

    async def task_facts(self, task_ids: Sequence[str]) -> dict[str, TaskFacts]:
        """The facts of these tasks (those stored)."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch(
                "SELECT task_id, payload FROM tasks WHERE task_id = ANY($1)", list(task_ids)
            )
            return await _facts(conn, rows)

    async def open_task_facts(self, reported_since: datetime) -> dict[str, TaskFacts]:
        """The facts of every task that may still have a deadline: none ended, and none reported
        (a custody step or a verdict) before `reported_since` (a task reported since may still owe
        the alert of a late report)."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch(
                "SELECT t.task_id, t.payload FROM tasks t WHERE NOT EXISTS ("
                "  SELECT 1 FROM custody_steps c WHERE c.task_id = t.task_id AND (c.step = ANY($1::text[])"
                "   OR (c.step IN ('reported', 'judged') AND c.recorded_at < $2)))"
                " AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.task_id = t.task_id"
                "  AND v.outcome <> 'incomplete' AND v.decided_at < $2)",
                list(_ENDS),
                reported_since,
            )
            return await _facts(conn, rows)

    # --- cases ------------------------------------------------------------------------------

    @staticmethod
    async def hold_snapshot(
        conn: asyncpg.Connection, enterprise_id: str, known_revision: int | None
    ) -> HeldSnapshot:
        """Lock the enterprise's snapshot until the transaction ends (it may not exist yet) and read
        it; its state only when it is newer than `known_revision` (None: not known at all)."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))", enterprise_id)
        row = await conn.fetchrow(
            "SELECT revision, applied, CASE WHEN $2::bigint IS NULL OR revision > $2 THEN state END AS state"
            " FROM stream_case_snapshots WHERE enterprise_id = $1",
            enterprise_id,
            known_revision,
        )
        if row is None:
            return HeldSnapshot(0, (), None)
        state = json.loads(row["state"]) if row["state"] is not None else None
        return HeldSnapshot(int(row["revision"]), tuple(row["applied"]), state)

    @staticmethod
    async def save_snapshot(
        conn: asyncpg.Connection,
        enterprise_id: str,
        revision: int,
        state: dict[str, Any],
        *,
        open_: bool,
        applied: Iterable[str],
    ) -> None:
        await conn.execute(
            "INSERT INTO stream_case_snapshots (enterprise_id, revision, state, open, applied, updated_at)"
            " VALUES ($1, $2, $3::jsonb, $4, $5, now()) ON CONFLICT (enterprise_id) DO UPDATE SET"
            " revision = EXCLUDED.revision, state = EXCLUDED.state, open = EXCLUDED.open,"
            " applied = EXCLUDED.applied, updated_at = EXCLUDED.updated_at",
            enterprise_id,
            revision,
            json.dumps(state),
            open_,
            list(applied)[-APPLIED_KEPT:],
        )

    @staticmethod
    async def known_cases(conn: asyncpg.Connection, case_ids: Sequence[str]) -> set[str]:
        """Those of `case_ids` that were ever opened (open or closed)."""
        rows = await conn.fetch("SELECT case_id FROM cases WHERE case_id = ANY($1)", list(case_ids))
        return {r["case_id"] for r in rows}

    @staticmethod
    async def stored_tasks(conn: asyncpg.Connection, task_ids: Sequence[str]) -> dict[str, SamplingTask]:
        rows = await conn.fetch("SELECT payload FROM tasks WHERE task_id = ANY($1)", list(task_ids))
        tasks = [SamplingTask.model_validate_json(r["payload"]) for r in rows]
        return {t.task_id: t for t in tasks}

    async def task(self, task_id: str) -> SamplingTask | None:
        async with self._store.transaction() as conn:
            return (await self.stored_tasks(conn, [task_id])).get(task_id)

    async def open_snapshots(self) -> dict[str, int]:
        """enterprise_id -> revision of the snapshots with open cases or orders waiting."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch("SELECT enterprise_id, revision FROM stream_case_snapshots WHERE open")
        return {r["enterprise_id"]: int(r["revision"]) for r in rows}

    async def unapplied_case_facts(
        self, margin_seconds: float
    ) -> tuple[list[Verdict], list[tuple[CustodyStep, SamplingTask]]]:
        """The verdicts that may concern a case and the refusals (with their task) that no snapshot
        says it applied: of an enterprise with a snapshot, those since the snapshot's last write minus
        the margin; of one without, all. Each in time order."""
        async with self._store.transaction() as conn:
            verdicts = await conn.fetch(
                "SELECT v.payload FROM verdicts v LEFT JOIN stream_case_snapshots s USING (enterprise_id)"
                f" WHERE {_CASE_VERDICT} AND (s.enterprise_id IS NULL"
                "  OR (v.decided_at >= s.updated_at - make_interval(secs => $1)"
                "      AND NOT ('verdict:' || v.verdict_id) = ANY(s.applied)))"
                " ORDER BY v.decided_at, v.verdict_id",
                margin_seconds,
            )
            refusals = await conn.fetch(
                "SELECT c.payload AS step, t.payload AS task"
                " FROM custody_steps c JOIN tasks t USING (task_id)"
                " LEFT JOIN stream_case_snapshots s ON s.enterprise_id = t.enterprise_id"
                " WHERE c.step = 'refused' AND (s.enterprise_id IS NULL"
                "  OR (c.recorded_at >= s.updated_at - make_interval(secs => $1)"
                "      AND NOT ('refusal:' || c.step_id) = ANY(s.applied)))"
                " ORDER BY c.recorded_at, c.seq",
                margin_seconds,
            )
        return (
            [Verdict.model_validate_json(r["payload"]) for r in verdicts],
            [
                (CustodyStep.model_validate_json(r["step"]), SamplingTask.model_validate_json(r["task"]))
                for r in refusals
            ],
        )

    # --- pass rates -------------------------------------------------------------------------

    async def pass_counts(self, products: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """product -> {outcome: tasks whose latest verdict has it}."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch(
                "SELECT product, outcome, count(*) AS n FROM (SELECT DISTINCT ON (task_id) product, outcome"
                "  FROM verdicts WHERE $1::text[] IS NULL OR product = ANY($1)"
                "  ORDER BY task_id, version DESC) v GROUP BY product, outcome",
                list(products) if products is not None else None,
            )
        counts: dict[str, dict[str, int]] = {}
        for r in rows:
            counts.setdefault(r["product"], {})[r["outcome"]] = int(r["n"])
        return counts

    async def product_outcomes(self, product: str) -> list[tuple[str, int, str, datetime]]:
        """(task_id, version, outcome, decided_at) of each task's latest verdict of `product`, read
        at one moment (the counts and the tasks behind them agree)."""
        async with self._store.transaction() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (task_id) task_id, version, outcome, decided_at FROM verdicts"
                " WHERE product = $1 ORDER BY task_id, version DESC",
                product,
            )
        return [(r["task_id"], int(r["version"]), r["outcome"], r["decided_at"]) for r in rows]

    async def previous_outcome(self, task_id: str, version: int) -> str | None:
        """The outcome of the task's latest verdict before `version`, if any."""
        async with self._store.transaction() as conn:
            found: str | None = await conn.fetchval(
                "SELECT outcome FROM verdicts WHERE task_id = $1 AND version < $2"
                " ORDER BY version DESC LIMIT 1",
                task_id,
                version,
            )
        return found


async def _facts(conn: asyncpg.Connection, tasks: Sequence[asyncpg.Record]) -> dict[str, TaskFacts]:
    facts = {r["task_id"]: TaskFacts(SamplingTask.model_validate_json(r["payload"])) for r in tasks}
    if not facts:
        return facts
    ids = list(facts)
    for r in await conn.fetch(
        "SELECT task_id, payload FROM custody_steps WHERE task_id = ANY($1) ORDER BY task_id, at, seq", ids
    ):
        facts[r["task_id"]].steps.append(CustodyStep.model_validate_json(r["payload"]))
    for r in await conn.fetch("SELECT task_id, alert_id FROM alerts WHERE task_id = ANY($1)", ids):
        facts[r["task_id"]].alerts.append(r["alert_id"])
    for r in await conn.fetch(
        "SELECT DISTINCT ON (task_id) task_id, verdict_id, decided_at FROM verdicts"
        " WHERE task_id = ANY($1) AND outcome <> 'incomplete' ORDER BY task_id, decided_at, version",
        ids,
    ):
        facts[r["task_id"]].verdict = (r["verdict_id"], r["decided_at"])
    return facts
