"""Samples the verdict processor let go of are rebuilt from PostgreSQL: a correction to a judged
sample and the last result of a sample pushed out by the bound give the right verdicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from adapters.store import Store
from consumers.verdicts import VerdictProcessor
from spotcheck.settings import Settings
from tests.integration.helpers import create_task, dead_letters, eventually, result, send, verdict_of

pytestmark = pytest.mark.integration

BOUND = 100  # the smallest the settings allow


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sample_cache_size": BOUND})


def processor(platform: dict[str, Any]) -> VerdictProcessor:
    found = platform["verdicts"]
    assert isinstance(found, VerdictProcessor)
    return found


async def test_a_correction_to_a_sample_let_go_after_its_verdict_makes_the_next_version(
    settings: Settings,
    platform: dict[str, Any],
    http: aiohttp.ClientSession,
    lab: AIOKafkaProducer,
) -> None:
    task = await create_task(http)
    sulfur = result(task, "sulfur", "10.4")
    await send(lab, settings, result(task, "ron", "92.6"), sulfur, result(task, "benzene", "0.62"))
    first = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert first["verdict"]["outcome"] == "unqualified"
    assert task["task_id"] not in processor(platform).cache  # judged: let go

    fix = result(task, "sulfur", "8.3", amends=sulfur["result_id"], reason="transcription error")
    await send(lab, settings, fix)
    second = await eventually(lambda: verdict_of(http, task["task_id"], version=2))
    verdict = second["verdict"]
    assert verdict["outcome"] == "qualified"
    assert verdict["supersedes"] == first["verdict"]["verdict_id"]
    assert fix["result_id"] in verdict["result_ids"] and sulfur["result_id"] not in verdict["result_ids"]
    assert task["task_id"] not in processor(platform).cache

    again = result(task, "sulfur", "8.2", amends=fix["result_id"], reason="re-measured")
    await send(lab, settings, sulfur, again)  # the amended result resent (harmless), then a third
    third = await eventually(lambda: verdict_of(http, task["task_id"], version=3))
    assert third["verdict"]["supersedes"] == verdict["verdict_id"]
    assert [v["version"] for v in third["verdict_history"]] == [1, 2, 3]
    assert len(third["results"]) == 5  # the resend was not stored twice
    assert await dead_letters(http) == []


async def test_an_open_sample_pushed_out_by_the_bound_keeps_its_results(
    settings: Settings,
    store: Store,
    platform: dict[str, Any],
    http: aiohttp.ClientSession,
    lab: AIOKafkaProducer,
) -> None:
    task = await create_task(http)
    await send(lab, settings, result(task, "ron", "92.6"), result(task, "sulfur", "8.3"))
    await eventually(lambda: _accepted(store, task["task_id"], 2))

    created = datetime.now(UTC).isoformat()
    others = [f"T-2026-8{n:05d}" for n in range(BOUND + 20)]  # open samples, no result yet
    for task_id in others:
        body = {
            "task_id": task_id,
            "sample_id": f"{task_id}-A",
            "enterprise_id": "E-1",
            "product": "0# diesel",
            "spec": "GB19147-2016:VI:0",
            "items": ["sulfur", "cetane_number"],
            "lab_id": "LAB-2",
            "created_at": created,
        }
        await lab.send(f"{settings.topic_namespace}.tasks", json.dumps(body).encode(), key=task_id.encode())
    await lab.flush()
    await eventually(lambda: _stored_tasks(store, others))
    cache = processor(platform).cache
    assert task["task_id"] not in cache and len(cache) <= BOUND

    await send(lab, settings, result(task, "benzene", "0.62"))
    view = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert view["verdict"]["version"] == 1 and view["verdict"]["outcome"] == "qualified"
    assert sorted(i["item"] for i in view["verdict"]["items"]) == ["benzene", "ron", "sulfur"]
    assert await dead_letters(http) == []


async def _accepted(store: Store, task_id: str, n: int) -> bool:
    async with store.transaction() as conn:
        found = await conn.fetchval(
            "SELECT count(*) FROM lab_results WHERE task_id = $1 AND state = 'accepted'", task_id
        )
    return int(found) >= n


async def _stored_tasks(store: Store, task_ids: list[str]) -> bool:
    return len(await store.known_task_ids(task_ids)) == len(task_ids)
