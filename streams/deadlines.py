"""Overdue detection: a table of each task's deadlines fed by tasks and custody, a timer that alerts.

One agent reads the tasks and custody topics (keyed by task_id, co-partitioned) and keeps the
table `deadlines`: task_id -> {"partition": p, "state": Deadlines}. Every
`overdue_check_seconds` a timer walks the keys of the partitions this worker is ACTIVE for (a
standby replica's keys are skipped: their partition is not in the assignor's actives) and, for each
task with an alert due, sends a check to an internal topic on that task's partition. The check
agent re-reads the task's state, publishes what is still due on the alerts topic and records it as
sent, all inside stream iteration on that partition, so the table's changelog carries the record
on the task's own partition and a restarted worker recovers it: nothing fires twice. (Faust
refuses table writes from a timer: a write needs the partition of the event being processed.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import faust
import structlog
from pydantic import ValidationError

from spotcheck.custody import CustodyStep
from spotcheck.deadlines import Deadlines, due_alerts, mark_sent, start, with_step, with_task
from spotcheck.errors import UnknownSpec
from spotcheck.events import SamplingTask, describe_validation_error
from spotcheck.settings import Settings
from spotcheck.specs import load_catalog
from spotcheck.topics import ALERTS, CUSTODY, TASKS

log = structlog.get_logger(__name__)


def _state(value: dict[str, Any] | None, task_id: str) -> Deadlines:
    return Deadlines.from_json_dict(value["state"]) if value is not None else start(task_id)


def attach(app: faust.App, settings: Settings) -> None:
    """Register the deadline table, its agents and the overdue timer on `app`."""
    zone = ZoneInfo(settings.timezone)
    catalog = load_catalog()
    tasks_topic, custody_topic = TASKS.full_name(settings), CUSTODY.full_name(settings)
    inputs = app.topic(tasks_topic, custody_topic, key_serializer="raw", value_serializer="raw")
    checks = app.topic(
        f"{settings.topic_namespace}-streams-deadline-checks",
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    alerts = app.topic(ALERTS.full_name(settings), key_serializer="raw", value_serializer="raw")
    table = app.Table("deadlines")  # task_id -> {"partition": int, "state": Deadlines as JSON}

    def report_days(spec_id: str) -> int | None:
        try:
            return catalog.get(spec_id).report_days
        except UnknownSpec:
            log.warning("task of an unknown spec: no report deadline from the catalog", spec=spec_id)
            return None

    def feed(event: faust.EventT) -> None:
        """Apply one task or custody step to its task's state (raises ValidationError if it does not
        read as one: the verdict processor and the custody processor, owners of those topics,
        dead-letter it)."""
        if event.message.topic == tasks_topic:
            task = SamplingTask.from_json(event.value)
            before = _state(table.get(task.task_id), task.task_id)
            state = with_task(before, task, report_days(task.spec), zone)
        else:
            step = CustodyStep.from_json(event.value)
            before = _state(table.get(step.task_id), step.task_id)
            state = with_step(before, step, zone)
        if state != before or table.get(state.task_id) is None:
            table[state.task_id] = {"partition": event.message.partition, "state": state.to_json_dict()}

    @app.agent(inputs)
    async def track_deadlines(stream: faust.StreamT[bytes]) -> None:
        """Keep each task's deadline state from its task and its custody steps."""
        async for event in stream.events():
            kind = "task" if event.message.topic == tasks_topic else "custody step"
            try:
                feed(event)
            except ValidationError as exc:  # the topic's owner (not this processor) dead-letters it
                log.debug(f"{kind} skipped: not readable", reason=describe_validation_error(exc))
            except Exception:  # noqa: BLE001 - one bad event must not stop the agent
                log.exception("deadlines not updated", topic=event.message.topic)

    @app.agent(checks)
    async def publish_overdue(stream: faust.StreamT[bytes]) -> None:
        """Publish the alerts still due for the task a check names, then record them as sent."""
        async for event in stream.events():
            task_id = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            try:
                value = table.get(task_id)
                if value is None:
                    continue
                pending = due_alerts(_state(value, task_id), datetime.now(UTC))
                for alert in pending:
                    sent_off = await alerts.send(key=alert.task_id.encode(), value=alert.to_json())
                    await sent_off  # on the broker before it is recorded as sent
                    log.info("overdue", task_id=task_id, kind=alert.kind.value, due=alert.due.isoformat())
                if pending:
                    current = table[task_id]  # it may have moved while sending: record on the current one
                    sent = mark_sent(_state(current, task_id), pending)
                    table[task_id] = {"partition": current["partition"], "state": sent.to_json_dict()}
            except Exception:  # noqa: BLE001 - the next check asks again
                log.exception("overdue alert not published", task_id=task_id)

    @app.timer(settings.overdue_check_seconds)
    async def check_overdue() -> None:
        """Ask, on each task's own partition, for the alerts due now (active partitions only)."""
        active = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == tasks_topic}
        if not active:
            return
        now = datetime.now(UTC)
        for task_id, value in list(table.items()):
            if value["partition"] not in active:
                continue  # a standby replica: its active owner alerts
            try:
                due = due_alerts(_state(value, task_id), now)
            except ValidationError:
                log.exception("unreadable deadline state", task_id=task_id)
                continue
            if due:
                ids = [a.alert_id for a in due]
                await checks.send(
                    key=str(task_id).encode(),
                    value=json.dumps({"alerts": ids, "asked_at": now.isoformat()}).encode(),
                    partition=value["partition"],
                )
