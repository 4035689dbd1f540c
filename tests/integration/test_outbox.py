"""Accepted means stored: what the API accepts is in PostgreSQL before any broker has it, the relay
publishes it, and a broker that forgot gets again what its readers had not processed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from adapters import kafka, outbox
from adapters.embedded import EmbeddedBroker, free_port
from adapters.labs import LabStore
from adapters.runtime import workers
from adapters.store import Store
from producers.relay import Relay
from spotcheck.settings import Settings
from tests.integration.helpers import (
    GASOLINE_ITEMS,
    TOKEN,
    create_task,
    eventually,
    read_topic,
    result,
    send,
    verdict_of,
)

pytestmark = pytest.mark.integration

VALUES = {"ron": "92.6", "sulfur": "8.3", "benzene": "0.62"}


async def _client(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Spotcheck-Lab": "LAB-1"},
    )


async def _ready(started: dict[str, object]) -> None:
    for worker in started.values():
        if hasattr(worker, "ready"):
            await asyncio.wait_for(worker.ready.wait(), 30)  # type: ignore[attr-defined]


async def _submit(http: aiohttp.ClientSession, task: dict[str, Any]) -> list[str]:
    """The task's three results over HTTP; their ids, each answered `accepted`."""
    bodies = [result(task, item, VALUES[item]) for item in GASOLINE_ITEMS]
    async with http.post("/api/v1/lab-results", json={"results": bodies}) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
    assert [o["status"] for o in answer["outcomes"]] == ["accepted"] * 3, answer
    return [b["result_id"] for b in bodies]


async def _rows(store: Store, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with store.transaction() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def _empty(settings: Settings, name: str) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = f"{settings.topic_namespace}.{name}"
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return sum((await consumer.end_offsets(parts)).values()) == 0
    finally:
        await consumer.stop()


async def _holds(settings: Settings, name: str, n: int) -> None:
    """The topic holds (at least) n records: read, since the embedded broker's end offsets can be low."""
    await read_topic(settings, name, lambda records: len(records) >= n)


@pytest.fixture
async def fresh_broker(tmp_path: Path) -> AsyncIterator[str]:
    """A second broker, empty: the first one as it is after a restart of the embedded stack."""
    broker = EmbeddedBroker("127.0.0.1", free_port(), tmp_path / "fresh-broker.log")
    await asyncio.to_thread(broker.start)
    yield broker.bootstrap
    await asyncio.to_thread(broker.stop)


async def test_an_accepted_result_is_stored_before_any_broker_has_it(
    settings: Settings, store: Store
) -> None:
    async with workers(settings, ("api",), TOKEN), await _client(settings) as http:
        task = await create_task(http)
        ids = await _submit(http, task)
        # nothing publishes: the task and the results are in PostgreSQL, their messages in the outbox
        stored = await _rows(store, "SELECT result_id, state FROM lab_results ORDER BY seq")
        assert stored == [{"result_id": rid, "state": "received"} for rid in ids]
        queued = await _rows(store, "SELECT topic FROM outbox WHERE published_at IS NULL ORDER BY seq")
        ns = settings.topic_namespace
        assert [r["topic"] for r in queued] == [f"{ns}.tasks"] + [f"{ns}.lab-results"] * 3
        assert await _empty(settings, "lab-results")
        async with http.get(f"/api/v1/tasks/{task['task_id']}") as resp:
            view = await resp.json()
        assert [r["state"] for r in view["results"]] == ["received"] * 3

    async with workers(settings, ("api", "relay", "verdicts"), TOKEN) as started:
        await _ready(started)
        async with await _client(settings) as http:
            view = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert view["verdict"]["outcome"] == "qualified"
    assert [r["state"] for r in view["results"]] == ["accepted"] * 3
    assert await _rows(store, "SELECT seq FROM outbox WHERE published_at IS NULL") == []


async def test_a_broker_that_forgot_gets_again_what_was_not_processed(
    settings: Settings, store: Store, fresh_broker: str
) -> None:
    # the relay publishes; the verdict processor never ran, so nothing was processed
    async with workers(settings, ("api", "relay"), TOKEN) as started, await _client(settings) as http:
        await _ready(started)
        task = await create_task(http)
        await _submit(http, task)
        await eventually(lambda: _none_left(store))
    await _holds(settings, "lab-results", 3)

    # the broker restarts empty: its readers never saw the messages
    forgetful = settings.model_copy(update={"kafka_bootstrap": fresh_broker})
    await kafka.create_topics(forgetful)
    async with workers(forgetful, ("api", "relay", "verdicts", "push"), TOKEN) as started:
        await _ready(started)
        async with await _client(forgetful) as http:
            view = await eventually(lambda: verdict_of(http, task["task_id"]))
        assert view["verdict"]["outcome"] == "qualified"
        await _holds(forgetful, "lab-results", 3)
        # both readers of the results committed past them: the relay finds them processed
        relay = started["relay"]
        assert isinstance(relay, Relay)
        await eventually(lambda: _processed(store, f"{settings.topic_namespace}.lab-results", 3))


async def test_processed_messages_are_not_published_again(
    settings: Settings, store: Store, fresh_broker: str
) -> None:
    async with workers(settings, ("api", "relay", "verdicts", "push"), TOKEN) as started:
        await _ready(started)
        async with await _client(settings) as http:
            task = await create_task(http)
            await _submit(http, task)
            await eventually(lambda: verdict_of(http, task["task_id"]))
        await eventually(lambda: _processed(store, f"{settings.topic_namespace}.lab-results", 3))

    forgetful = settings.model_copy(update={"kafka_bootstrap": fresh_broker})
    await kafka.create_topics(forgetful)
    producer = kafka.producer(forgetful)
    await producer.start()
    try:
        again = await Relay(forgetful, store, producer).recover()
    finally:
        await producer.stop()
    reset = await _rows(store, "SELECT topic FROM outbox WHERE published_at IS NULL")
    ns = settings.topic_namespace
    # the task (no stream processor read it) and the verdict (no reader ran) go again; results do not
    assert sorted(r["topic"] for r in reset) == [f"{ns}.tasks", f"{ns}.verdicts"]
    assert again == 2


async def test_a_message_the_broker_can_never_take_stalls_nothing(settings: Settings, store: Store) -> None:
    too_big = (f"{settings.topic_namespace}.dead-letters", "huge", b"x" * (2 * 1024 * 1024))
    fine = (f"{settings.topic_namespace}.dead-letters", "fine", b"{}")
    async with store.transaction() as conn:
        await outbox.add(conn, [too_big, fine])
    async with workers(settings, ("relay",), TOKEN) as started:
        await _ready(started)
        await eventually(lambda: _none_left(store))
    rows = await _rows(
        store, "SELECT key, published_at IS NOT NULL AS sent, failure FROM outbox ORDER BY seq"
    )
    assert rows[0]["key"] == b"huge" and not rows[0]["sent"] and "MessageSizeTooLarge" in rows[0]["failure"]
    assert rows[1] == {"key": b"fine", "sent": True, "failure": None}
    await _holds(settings, "dead-letters", 1)


async def _none_left(store: Store) -> bool:
    left = await _rows(store, "SELECT seq FROM outbox WHERE published_at IS NULL AND failed_at IS NULL")
    return not left


async def _processed(store: Store, topic: str, n: int) -> bool:
    rows = await _rows(store, "SELECT seq FROM outbox WHERE topic = $1 AND processed_at IS NOT NULL", topic)
    return len(rows) >= n


async def test_a_lab_can_ask_what_was_stored_of_its_result(
    settings: Settings, store: Store, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    task = await create_task(http)
    own = (await LabStore(store).create_key("LAB-1"))["key"]
    other = (await LabStore(store).create_key("LAB-2"))["key"]
    sent = result(task, "ron", "92.6")
    await send(lab, settings, sent)  # straight to the broker, as a lab's own Kafka client does

    async def stored() -> dict[str, Any] | None:
        async with http.get(
            f"/api/v1/lab-results/{sent['result_id']}", headers={"Authorization": f"Bearer {own}"}
        ) as resp:
            return await resp.json() if resp.status == 200 else None

    found = await eventually(stored)
    assert found["state"] == "accepted" and found["task_id"] == task["task_id"]
    assert found["result"]["value"] == "92.6"
    for key in (other, own):  # another lab's result, or one never sent: nothing to see
        rid = sent["result_id"] if key == other else "LAB1-never-sent"
        async with http.get(f"/api/v1/lab-results/{rid}", headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 404, await resp.text()
