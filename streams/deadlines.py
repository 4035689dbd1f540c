"""Overdue detection: a table of each task's deadlines fed by tasks, custody and verdicts, a timer
that alerts.

One agent reads the tasks, custody and verdicts topics (keyed by task_id, co-partitioned) and keeps
the table `deadlines`: task_id -> {"partition": p, "state": Deadlines}; a verdict means the task
was reported. Every `overdue_check_seconds` a timer walks the keys of the partitions this worker is
ACTIVE for (a standby replica's keys are skipped: their partition is not in the assignor's actives)
and, for each task with an alert due, sends a check to an internal topic on that task's partition.
The check agent re-reads the task's state, stores what is still due in `alerts` with its message in
the outbox (one transaction; an alert stored already is not sent again), then records it as sent,
all inside stream iteration on that partition. (Faust refuses table writes from a timer: a write
needs the partition of the event being processed.) A task with no deadline left (ended, or reported
with every alert it owes sent) is marked finished, and dropped `stream_finished_keep_hours` later.

PostgreSQL holds every fact of a task's deadlines (the task, its accepted custody steps, its
verdicts, the alerts stored), so the table is a cache of the record: a task the table does not hold
is read from it before an input is applied, and after each recovery the tasks the table lacks or
holds behind the record are seeded again (streams/rebuild.py): nothing is lost or fired twice when
the broker lost the changelog. The timer waits until the input the worker had yet to consume when
its partitions were assigned is processed, so no alert fires on a state that input would change.
"""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import faust
import structlog
from pydantic import ValidationError

from adapters import outbox
from adapters.alerts import AlertStore
from adapters.store import Store
from adapters.stream_state import StreamRecord, TaskFacts
from spotcheck.clock import clock_for
from spotcheck.custody import CustodyStep, TaskState, verdict_steps
from spotcheck.deadlines import (
    Deadlines,
    due_alerts,
    finished,
    mark_sent,
    merge,
    start,
    with_step,
    with_task,
)
from spotcheck.errors import InvalidInput, UnknownSpec
from spotcheck.events import Outcome, SamplingTask, Verdict, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.specs import load_catalog
from spotcheck.topics import ALERTS, CUSTODY, TASKS, VERDICTS
from streams.rebuild import Backlog, Rebuild, partition_of, patiently

log = structlog.get_logger(__name__)


def _state(value: dict[str, Any] | None, task_id: str) -> Deadlines:
    return Deadlines.from_json_dict(value["state"]) if value is not None else start(task_id)


def attach(app: faust.App, settings: Settings, store: Store) -> None:
    """Register the deadline table, its agents, the overdue timer and the table's rebuild on `app`."""
    zone, now = ZoneInfo(settings.timezone), clock_for(settings.clock_file)
    catalog = load_catalog()
    record, alert_store = StreamRecord(store), AlertStore(store)
    tasks_topic, custody_topic = TASKS.full_name(settings), CUSTODY.full_name(settings)
    verdicts_topic, alerts_topic = VERDICTS.full_name(settings), ALERTS.full_name(settings)
    inputs = app.topic(
        tasks_topic, custody_topic, verdicts_topic, key_serializer="raw", value_serializer="raw"
    )
    checks = app.topic(
        f"{settings.topic_namespace}-streams-deadline-checks",
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    seeds = app.topic(
        f"{settings.topic_namespace}-streams-deadline-seeds",
        internal=True,
        key_serializer="raw",
        value_serializer="json",
    )
    table = app.Table("deadlines")  # task_id -> {"partition", "state": Deadlines, "finished": epoch}
    backlog = Backlog(
        app,
        settings,
        (tasks_topic, custody_topic, verdicts_topic),
        max(60.0, 10 * settings.overdue_check_seconds),
    )
    keep_finished = settings.stream_finished_keep_hours * 3600

    def report_days(spec_id: str) -> int | None:
        try:
            return catalog.get(spec_id).report_days
        except UnknownSpec:
            log.warning("task of an unknown spec: no report deadline from the catalog", spec=spec_id)
            return None

    def recorded(facts: TaskFacts) -> Deadlines:
        """A task's deadlines as PostgreSQL has them."""
        task = facts.task
        state = with_task(start(task.task_id), task, report_days(task.spec), zone)
        for step in facts.steps:
            state = with_step(state, step, zone)
        if facts.verdict is not None:
            for step in verdict_steps(TaskState.RECEIVED, task.task_id, *facts.verdict):
                state = with_step(state, step, zone)
        return state.model_copy(update={"sent": tuple(sorted(set(facts.alerts)))})

    async def held(task_id: str, value: dict[str, Any] | None) -> Deadlines | None:
        """The table's state of a task; one it does not hold as the record has it (None: unknown)."""
        if value is not None:
            return _state(value, task_id)
        found = await patiently("deadline monitor", functools.partial(record.task_facts, [task_id]))
        return recorded(found[task_id]) if task_id in found else None

    def keep(task_id: str, state: Deadlines, partition: int, before: dict[str, Any] | None) -> None:
        """Record `state` (on the partition of the event being processed); a task with no deadline
        left is marked finished, and dropped `stream_finished_keep_hours` later by a check."""
        value: dict[str, Any] = {"partition": partition, "state": state.to_json_dict()}
        if finished(state, datetime.now(UTC)):
            value["finished"] = before.get("finished", time.time()) if before is not None else time.time()
        if value != before:
            table[task_id] = value

    def expired(value: dict[str, Any]) -> bool:
        return "finished" in value and time.time() - value["finished"] > keep_finished

    async def feed(event: faust.EventT) -> None:
        """Apply one task, custody step or verdict to its task's state (raises ValidationError if it
        does not read as one: the verdict processor and the custody processor, owners of those
        topics, dead-letter it; a verdict that does not read is skipped here)."""
        topic = event.message.topic
        if topic == verdicts_topic:
            try:
                verdict = Verdict.from_json(event.value)
            except ValueError:
                return
            value = table.get(verdict.task_id)
            known = await held(verdict.task_id, value)
            if known is None or verdict.outcome is Outcome.INCOMPLETE:
                return  # a verdict of a task never seen tells no deadline
            state = known
            for step in verdict_steps(
                TaskState.RECEIVED, verdict.task_id, verdict.verdict_id, verdict.decided_at
            ):
                state = with_step(state, step, zone)
        elif topic == tasks_topic:
            task = SamplingTask.from_json(event.value)
            value = table.get(task.task_id)
            known = await held(task.task_id, value)
            state = with_task(known or start(task.task_id), task, report_days(task.spec), zone)
        else:
            step = CustodyStep.from_json(event.value)
            value = table.get(step.task_id)
            known = await held(step.task_id, value)
            state = with_step(known or start(step.task_id), step, zone)
        keep(state.task_id, state, event.message.partition, value)

    @app.agent(inputs)
    async def track_deadlines(stream: faust.StreamT[bytes]) -> None:
        """Keep each task's deadline state from its task, its custody steps and its verdicts."""
        async for event in stream.events():
            kind = {tasks_topic: "task", verdicts_topic: "verdict"}.get(event.message.topic, "custody step")
            try:
                await feed(event)
            except ValidationError as exc:  # the topic's owner (not this processor) dead-letters it
                log.debug(f"{kind} skipped: not readable", reason=describe_validation_error(exc))
            except Exception:  # noqa: BLE001 - one bad event must not stop the agent
                log.exception("deadlines not updated", topic=event.message.topic)
            backlog.seen(event)

    @app.agent(checks)
    async def publish_overdue(stream: faust.StreamT[bytes]) -> None:
        """Store the alerts still due for the task a check names, with their messages in the outbox,
        then record them as sent."""
        async for event in stream.events():
            task_id = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            try:
                value = table.get(task_id)
                if value is None:
                    continue
                if "finished" in value:
                    if expired(value):
                        del table[task_id]
                    continue
                pending = due_alerts(_state(value, task_id), now())
                if not pending:
                    continue
                async with store.transaction() as conn:  # stored once: published once
                    new = await alert_store.save(pending, conn)
                    await outbox.add(
                        conn, [(alerts_topic, a.task_id, a.to_json()) for a in pending if a.alert_id in new]
                    )
                for alert in pending:
                    log.info(
                        "overdue",
                        task_id=task_id,
                        kind=alert.kind.value,
                        due=alert.due.isoformat(),
                        sent_before=alert.alert_id not in new,
                    )
                current = table.get(task_id)  # it may have moved while storing: record on the current one
                sent = mark_sent(_state(current, task_id) if current is not None else start(task_id), pending)
                keep(task_id, sent, value["partition"], current)
            except Exception:  # noqa: BLE001 - the next check asks again
                log.exception("overdue alert not published", task_id=task_id)

    @app.agent(seeds)
    async def merge_seeds(stream: faust.StreamT[dict[str, Any]]) -> None:
        """Merge what the record knows of a task (sent by the rebuild) into the table."""
        async for event in stream.events():
            task_id = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            try:
                seed = Deadlines.from_json_dict(event.value)
                value = table.get(task_id)
                state = merge(_state(value, task_id), seed, zone) if value is not None else seed
                keep(task_id, state, event.message.partition, value)
            except Exception:  # noqa: BLE001 - one bad seed must not stop the agent
                log.exception("deadline seed not merged", task_id=task_id)

    async def sweep(active: set[int], partitions: int) -> dict[str, int]:
        """Seed the tasks of `active` partitions the table lacks or holds behind the record."""
        left = await backlog.measure(active)
        if not active:
            return {"keys": len(table), "seeds": 0}
        margin = timedelta(hours=settings.stream_refeed_margin_hours)
        facts = await record.open_task_facts(datetime.now(UTC) - margin)
        sent = 0
        for task_id, found in facts.items():
            value = table.get(task_id)
            partition = value["partition"] if value is not None else partition_of(task_id, partitions)
            if partition not in active:
                continue
            known = recorded(found)
            if value is None:
                if finished(known, datetime.now(UTC)):
                    continue
            else:
                state = _state(value, task_id)
                if merge(state, known, zone) == state:
                    continue
            await seeds.send(key=task_id.encode(), value=known.to_json_dict(), partition=partition)
            sent += 1
        return {"keys": len(table), "open": len(facts), "backlog": left, "seeds": sent}

    Rebuild(app, settings, store, table, tasks_topic, sweep)

    @app.timer(settings.overdue_check_seconds)
    async def check_overdue() -> None:
        """Ask, on each task's own partition, for the alerts due now (active partitions only)."""
        active = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == tasks_topic}
        if not active or not backlog.caught_up():
            return
        try:
            at = now()
        except InvalidInput as exc:
            log.error("no time to check the deadlines by", error=str(exc))
            return
        for task_id, value in list(table.items()):
            if value["partition"] not in active:
                continue  # a standby replica: its active owner alerts
            if "finished" in value:
                if expired(value):  # its own partition drops it
                    await checks.send(key=str(task_id).encode(), value=b"{}", partition=value["partition"])
                continue
            try:
                due = due_alerts(_state(value, task_id), at)
            except ValidationError:
                log.exception("unreadable deadline state", task_id=task_id)
                continue
            if due:
                ids = [a.alert_id for a in due]
                await checks.send(
                    key=str(task_id).encode(),
                    value=json.dumps({"alerts": ids, "asked_at": at.isoformat()}).encode(),
                    partition=value["partition"],
                )
