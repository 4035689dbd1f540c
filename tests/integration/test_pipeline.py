"""The whole path on the real broker and database: task -> results -> verdict (topic, store, API)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from adapters.runtime import workers
from adapters.store import Store
from spotcheck.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token"
T = TypeVar("T")

GASOLINE_ITEMS = ["ron", "sulfur", "benzene"]


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def platform(settings: Settings, store: Store) -> AsyncIterator[dict[str, Any]]:
    async with workers(settings, ("api", "verdicts", "sink"), TOKEN) as started:
        await asyncio.wait_for(started["verdicts"].ready.wait(), 30)  # type: ignore[attr-defined]
        await asyncio.wait_for(started["sink"].ready.wait(), 30)  # type: ignore[attr-defined]
        yield started


@pytest.fixture
async def http(
    settings: Settings, platform: dict[str, Any]
) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as session:
        yield session


@pytest.fixture
async def lab(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A lab's own plain Kafka client."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, enable_idempotence=False)
    await producer.start()
    yield producer
    await producer.stop()


async def create_task(http: aiohttp.ClientSession, **overrides: Any) -> dict[str, Any]:
    body = {
        "enterprise_id": "91370500MA3C000001",
        "product": "92# motor gasoline",
        "spec": "GB17930-2016:VIB:92",
        "items": GASOLINE_ITEMS,
        "lab_id": "LAB-1",
    }
    body.update(overrides)
    async with http.post("/api/v1/tasks", json=body) as resp:
        payload = await resp.json()
        assert resp.status == 201, payload
        return payload


def result(task: dict[str, Any], item: str, value: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "result_id": f"LAB1-{uuid.uuid4().hex[:10]}",
        "lab_id": task["lab_id"],
        "task_id": task["task_id"],
        "sample_id": task["sample_id"],
        "item": item,
        "value": value,
        "unit": None,
        "method": None,
        "measured_at": datetime.now(UTC).isoformat(),
        "amends": None,
        "reason": None,
    }
    body.update(overrides)
    return body


async def send(lab: AIOKafkaProducer, settings: Settings, *bodies: dict[str, Any] | bytes) -> None:
    topic = f"{settings.topic_namespace}.lab-results"
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        key = None if isinstance(body, bytes) else body["task_id"].encode()
        await lab.send_and_wait(topic, raw, key=key)


async def verdict_of(
    http: aiohttp.ClientSession, task_id: str, version: int = 1
) -> dict[str, Any] | None:
    async with http.get(f"/api/v1/tasks/{task_id}") as resp:
        view = await resp.json()
    verdict = view.get("verdict")
    return view if verdict and verdict["version"] >= version else None


async def dead_letters(http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with http.get("/api/v1/dead-letters") as resp:
        return (await resp.json())["dead_letters"]


async def test_results_to_verdict_on_topic_store_and_api(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    task = await create_task(http)
    assert task["task_id"].startswith("T-") and task["sample_id"] == f"{task['task_id']}-A"

    watcher = AIOKafkaConsumer(
        f"{settings.topic_namespace}.verdicts",
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await watcher.start()
    try:
        await send(lab, settings, result(task, "ron", "92.6"), result(task, "sulfur", "10.4"))
        await asyncio.sleep(1.0)
        view = await verdict_of(http, task["task_id"])
        assert view is None, "no verdict before every planned item has a result"
        await send(lab, settings, result(task, "benzene", "0.62"))

        message = await asyncio.wait_for(watcher.getone(), 30)
        on_topic = json.loads(message.value)
        assert message.key.decode() == task["task_id"]
    finally:
        await watcher.stop()
    assert on_topic["schema"] == "verdict/1"
    assert on_topic["outcome"] == "unqualified"  # sulfur 10.4 > 10 by the whole-value method
    judged = {i["item"]: i for i in on_topic["items"]}
    assert judged["sulfur"]["judgement"] == "fail" and judged["sulfur"]["value"] == "10.4"
    assert judged["ron"]["judgement"] == "pass" and judged["benzene"]["judgement"] == "pass"

    view = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert view["verdict"]["verdict_id"] == on_topic["verdict_id"]
    assert len(view["results"]) == 3

    async with http.get(
        "/api/v1/verdicts",
        params={"outcome": "unqualified", "enterprise_id": task["enterprise_id"]},
    ) as resp:
        listed = await resp.json()
    assert [v["task_id"] for v in listed["verdicts"]] == [task["task_id"]]
    async with http.get("/api/v1/verdicts", params={"outcome": "qualified"}) as resp:
        assert (await resp.json())["count"] == 0


async def test_resend_is_harmless_and_correction_makes_a_new_version(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    task = await create_task(http)
    sulfur = result(task, "sulfur", "10.4")
    await send(lab, settings, result(task, "ron", "92.6"), sulfur, result(task, "benzene", "0.62"))
    first = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert first["verdict"]["outcome"] == "unqualified"

    await send(lab, settings, sulfur)  # the same result again: nothing changes
    fix = result(task, "sulfur", "8.3", amends=sulfur["result_id"], reason="transcription error")
    await send(lab, settings, fix)
    second = await eventually(lambda: verdict_of(http, task["task_id"], version=2))
    verdict = second["verdict"]
    assert verdict["outcome"] == "qualified"
    assert verdict["supersedes"] == first["verdict"]["verdict_id"]
    assert (
        fix["result_id"] in verdict["result_ids"]
        and sulfur["result_id"] not in verdict["result_ids"]
    )
    assert [v["version"] for v in second["verdict_history"]] == [1, 2]  # both kept
    assert len(second["results"]) == 4  # the resend was not stored twice


async def test_bad_input_becomes_dead_letters_with_reasons(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    task = await create_task(http)
    await send(
        lab,
        settings,
        result(task, "ron", "92.6", lab_id="LAB-9"),  # a task of another lab
        result(task, "sulfur", "ten"),  # not a number
        result(task, "olefins", "12"),  # not planned for the task
        b"{not json",
    )
    letters = await eventually(lambda: _at_least(dead_letters(http), 4), timeout=30)
    reasons = " | ".join(d["reason"] for d in letters)
    assert "assigned to lab LAB-1, not LAB-9" in reasons
    assert "value" in reasons and "not a decimal number" in reasons
    assert "'olefins' is not planned" in reasons
    assert "invalid lab-result/1" in reasons
    assert all(d["source"] == f"{settings.topic_namespace}.lab-results" for d in letters)


async def _at_least(coro: Awaitable[list[Any]], n: int) -> list[Any] | None:
    items = await coro
    return items if len(items) >= n else None


async def test_a_result_waits_for_its_late_task(
    settings: Settings, store: Store, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    created = datetime.now(UTC).isoformat()
    task = {
        "task_id": "T-2026-900001",
        "sample_id": "T-2026-900001-A",
        "enterprise_id": "E-1",
        "product": "0# diesel",
        "spec": "GB19147-2016:VI:0",
        "items": ["sulfur", "cetane_number"],
        "lab_id": "LAB-2",
        "created_at": created,
    }
    await send(lab, settings, result(task, "sulfur", "6.1"), result(task, "cetane_number", "52.3"))
    await asyncio.sleep(1.5)
    assert await verdict_of(http, task["task_id"]) is None
    await lab.send_and_wait(
        f"{settings.topic_namespace}.tasks", json.dumps(task).encode(), key=task["task_id"].encode()
    )
    view = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert view["verdict"]["outcome"] == "qualified"
    assert await dead_letters(http) == []
