"""Ownership before content: a lab key or an inspector's token asking about a task not theirs gets a
403 that tells nothing of that task (its planned items, its sample, its spec, its lab)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from adapters.labs import LabStore
from adapters.store import Store
from spotcheck.settings import Settings
from tests.integration.helpers import create_task, result

pytestmark = pytest.mark.integration


def session(settings: Settings, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {token}"},
    )


def tells_nothing_of(task: dict[str, Any], text: str) -> None:
    """`text` names none of what the task holds beyond the id the caller sent."""
    for secret in (task["sample_id"], task["spec"], task["lab_id"], *task["items"]):
        assert secret not in text, (secret, text)


@pytest.fixture
async def lab2_key(store: Store, platform: dict[str, Any]) -> str:
    made = await LabStore(store).create_key("LAB-2")
    key: str = made["key"]
    return key


async def test_a_result_for_another_labs_task_is_403_whatever_its_content(
    settings: Settings, http: aiohttp.ClientSession, lab2_key: str
) -> None:
    theirs = await create_task(http)  # LAB-1's, gasoline: ron, sulfur, benzene
    tries = [
        {**result(theirs, "pah", "3"), "lab_id": "LAB-2"},  # an item not planned
        {**result(theirs, "ron", "93"), "lab_id": "LAB-2", "sample_id": "S-GUESS"},  # a wrong sample
        {**result(theirs, "sulfur", "8"), "lab_id": "LAB-2"},  # planned and within the scope
    ]
    async with session(settings, lab2_key) as lab:
        for body in tries:
            async with lab.post("/api/v1/lab-results", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 403, answer
                assert answer["field"] == "task_id"
                tells_nothing_of(theirs, answer["error"])
        async with lab.post("/api/v1/lab-results", json={"results": tries}) as resp:
            assert resp.status == 202
            outcomes = (await resp.json())["outcomes"]
    assert [o["status"] for o in outcomes] == ["forbidden"] * 3
    for outcome in outcomes:
        tells_nothing_of(theirs, outcome["reason"])


async def test_custody_steps_and_trails_of_another_labs_task_are_403_and_tell_nothing(
    settings: Settings, http: aiohttp.ClientSession, lab2_key: str
) -> None:
    theirs = await create_task(http)
    task_id = theirs["task_id"]
    async with session(settings, lab2_key) as lab:
        for body in (
            {"step": "received"},
            {"step": "no-such-step", "colour": "red"},
            ["not", "an", "object"],
        ):
            async with lab.post(f"/api/v1/tasks/{task_id}/custody", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 403, answer
                tells_nothing_of(theirs, answer["error"])
        async with lab.get(f"/api/v1/tasks/{task_id}/trail") as resp:
            answer = await resp.json()
            assert resp.status == 403, answer
            tells_nothing_of(theirs, answer["error"])
