"""Overdue detection in the faust worker (its own process) on the real broker, stored by the sink, served by
the API: one alert per missed deadline, none for a task in time or ended, none twice across a restart."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from spotcheck.custody import CustodyStep, TaskState
from spotcheck.events import SamplingTask
from spotcheck.settings import Settings
from tests.integration.helpers import (
    GASOLINE_ITEMS,
    create_task,
    dead_letters,
    eventually,
    streams_worker,
    topic_to_end,
)

pytestmark = pytest.mark.integration

S = TaskState
NOW = datetime.now(UTC)
SPEC = "GB17930-2016:VIB:92"  # the catalog gives 10 days to report


@asynccontextmanager
async def quick_worker(settings: Settings, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """The stream processor checking deadlines every second."""
    quick = settings.model_copy(update={"overdue_check_seconds": 1.0})
    async with streams_worker(quick, log) as proc:
        yield proc


def task(task_id: str, **kw: Any) -> SamplingTask:
    fields: dict[str, Any] = dict(
        task_id=task_id,
        sample_id=f"{task_id}-A",
        enterprise_id="91370500MA3C000001",
        product="92# motor gasoline",
        spec=SPEC,
        items=tuple(GASOLINE_ITEMS),
        lab_id="LAB-1",
        inspectors=("INS-1", "INS-2"),
        created_at=NOW - timedelta(days=25),
        sampling_due=NOW + timedelta(days=5),
    )
    fields.update(kw)
    return SamplingTask.model_validate(fields)


def step(task_id: str, target: TaskState, at: datetime) -> CustodyStep:
    fields: dict[str, Any] = dict(step_id=f"{task_id}-{target}", task_id=task_id, step=target, at=at)
    if target is S.SAMPLED:
        fields |= dict(
            actor="INS-1",
            actor_role="inspector",
            signatures={"inspectors": ["INS-1", "INS-2"], "enterprise": "Wang Li"},
            seals={"test": f"{task_id}-S1", "retained": f"{task_id}-S2"},
        )
    elif target in (S.RECEIVED, S.REPORTED):
        fields |= dict(actor="LU-1", actor_role="lab", lab_id="LAB-1")
        if target is S.RECEIVED:
            fields |= dict(seal_state="intact", seals={"test": f"{task_id}-S1"})
    else:
        fields |= dict(actor="PL-1", actor_role="planner", reason="the enterprise closed down")
    return CustodyStep.model_validate(fields)


async def publish(
    producer: AIOKafkaProducer, settings: Settings, *events: SamplingTask | CustodyStep
) -> None:
    """Events on their topics keyed by task_id, in the order given."""
    for event in events:
        topic = "tasks" if isinstance(event, SamplingTask) else "custody"
        await producer.send_and_wait(
            f"{settings.topic_namespace}.{topic}", event.to_json(), key=event.task_id.encode()
        )


async def alerts_on_topic(settings: Settings) -> list[dict[str, Any]]:
    """Every alert on the alerts topic, from the beginning."""
    return await topic_to_end(settings, "alerts")


def counted(alerts: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((a["task_id"], a["kind"]) for a in alerts)


async def api_alerts(http: aiohttp.ClientSession, **query: str) -> list[dict[str, Any]]:
    async with http.get("/api/v1/alerts", params=query) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body["alerts"]


def topic_has(settings: Settings, wanted: Callable[[Counter[tuple[str, str]]], bool]) -> Any:
    async def probe() -> list[dict[str, Any]] | None:
        found = await alerts_on_topic(settings)
        return found if wanted(counted(found)) else None

    return probe


async def test_overdue_tasks_are_alerted_once_even_across_a_restart(
    settings: Settings,
    platform: dict[str, Any],
    http: aiohttp.ClientSession,
    lab: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    # A: made by hand, due yesterday, never sampled
    late = await create_task(
        http, inspectors=["INS-1", "INS-2"], sampling_due=(NOW - timedelta(days=1)).isoformat()
    )
    a = late["task_id"]
    # steps are sent before their tasks: the worker meets them in that order or not, either way
    received_at = NOW - timedelta(days=20)
    await publish(
        lab,
        settings,
        step("T-B", S.SAMPLED, NOW - timedelta(days=3)),  # sampled a day before its due time
        task("T-B", sampling_due=NOW - timedelta(days=2)),
        step("T-C", S.SAMPLED, received_at - timedelta(days=1)),
        step("T-C", S.RECEIVED, received_at),  # report due 10 days later: missed
        task("T-C"),
        step("T-D", S.SAMPLED, received_at - timedelta(days=1)),
        step("T-D", S.RECEIVED, received_at),
        step("T-D", S.REPORTED, received_at + timedelta(days=5)),  # in time
        task("T-D"),
        step("T-E", S.CANCELLED, NOW - timedelta(days=1)),  # due two days ago, but cancelled
        task("T-E", sampling_due=NOW - timedelta(days=2)),
    )
    await lab.send_and_wait(f"{settings.topic_namespace}.custody", b'{"schema": "custody/1"}', key=b"T-X")
    expected = {(a, "sampling-overdue"): 1, ("T-C", "report-overdue"): 1}

    log = tmp_path / "streams.log"
    async with quick_worker(settings, log):
        first = await eventually(topic_has(settings, lambda c: set(c) >= set(expected)), timeout=120)
        stored = await eventually(lambda: _at_least(api_alerts(http), 2))
        letters = await eventually(lambda: _of_key(dead_letters(http), "T-X"))
    assert counted(first) == expected
    by_task = {x["task_id"]: x for x in stored}
    assert set(by_task) == {a, "T-C"}
    assert by_task[a]["kind"] == "sampling-overdue" and by_task[a]["schema"] == "alert/1"
    assert datetime.fromisoformat(by_task[a]["due"]) == datetime.fromisoformat(late["sampling_due"])
    assert by_task[a]["inspectors"] == ["INS-1", "INS-2"] and by_task[a]["state"] == "assigned"
    report_due = datetime.fromisoformat(by_task["T-C"]["due"])
    assert report_due - received_at > timedelta(days=10) - timedelta(days=1)
    assert by_task["T-C"]["state"] == "received"
    assert [x["task_id"] for x in await api_alerts(http, kind="report-overdue")] == ["T-C"]
    assert [x["task_id"] for x in await api_alerts(http, task_id=a)] == [a]
    # the bad step is dead-lettered once, by its topic's owner (the custody processor), not here
    assert [(x["source"], x["reason"][:17]) for x in letters] == [
        (f"{settings.topic_namespace}.custody", "invalid custody/1")
    ]

    # the restarted worker recovers its table (alerts sent included) and fires nothing again;
    # two tasks made overdue after the restart prove it checked since
    async with quick_worker(settings, log):
        await publish(lab, settings, task("T-F", sampling_due=NOW - timedelta(days=1)))
        await eventually(topic_has(settings, lambda c: ("T-F", "sampling-overdue") in c), timeout=120)
        await publish(lab, settings, task("T-G", sampling_due=NOW - timedelta(days=1)))
        after = await eventually(topic_has(settings, lambda c: ("T-G", "sampling-overdue") in c), timeout=60)
    assert counted(after) == expected | {("T-F", "sampling-overdue"): 1, ("T-G", "sampling-overdue"): 1}
    stored = await eventually(lambda: _at_least(api_alerts(http), 4))
    assert sorted(x["task_id"] for x in stored) == sorted([a, "T-C", "T-F", "T-G"])


async def test_the_alerts_api_refuses_bad_filters(http: aiohttp.ClientSession) -> None:
    for query, field in (
        ({"kind": "late"}, "kind"),
        ({"since": "yesterday"}, "since"),
        ({"color": "red"}, "color"),
    ):
        async with http.get("/api/v1/alerts", params=query) as resp:
            body = await resp.json()
        assert resp.status == 422 and body["field"] == field, body
    assert await api_alerts(http) == []


async def test_a_task_made_by_hand_carries_its_sampling_due(
    http: aiohttp.ClientSession, settings: Settings
) -> None:
    made = await create_task(http)
    due = datetime.fromisoformat(made["sampling_due"])
    assert due.utcoffset() == timedelta(hours=8)  # the bureau's zone: Asia/Shanghai
    assert (due.hour, due.minute, due.second) == (23, 59, 59)
    days = (due.date() - datetime.fromisoformat(made["created_at"]).astimezone(due.tzinfo).date()).days
    assert days == settings.sampling_days


async def _at_least(coro: Any, n: int) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = await coro
    return items if len(items) >= n else None


async def _of_key(coro: Any, key: str) -> list[dict[str, Any]] | None:
    letters: list[dict[str, Any]] = await coro
    return [x for x in letters if x["key"] == key] or None
