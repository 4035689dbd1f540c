"""The whole path on the real broker and database: task -> results -> verdict (topic, store, API)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from adapters.store import Store
from spotcheck.settings import Settings
from tests.integration.helpers import (
    _at_least,
    create_task,
    dead_letters,
    eventually,
    result,
    send,
    verdict_of,
)

pytestmark = pytest.mark.integration


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
    assert fix["result_id"] in verdict["result_ids"] and sulfur["result_id"] not in verdict["result_ids"]
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
