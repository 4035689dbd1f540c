"""A sample's whole journey on the real broker and database: a draw selects the enterprise and its
inspectors, the task goes out on the topic, the inspectors sample and seal it with their own tokens,
the lab receives and tests it with its key and reports its results, the verdict is reached, and the
trail shows every step without a gap."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from adapters.store import Store
from spotcheck.settings import Settings
from tests.integration.helpers import eventually, read_topic, small_directory

pytestmark = pytest.mark.integration

GASOLINE = "GB17930-2016:VIB:92"


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_draw_to_custody_to_results_to_verdict(
    settings: Settings, store: Store, http: aiohttp.ClientSession, producer: AIOKafkaProducer
) -> None:
    await small_directory(store, producer, settings)
    today = datetime.now(ZoneInfo(settings.timezone)).date()
    plan = {
        "plan_id": "P-JOURNEY",
        "draw_date": today.isoformat(),
        "categories": [
            {"product": "motor gasoline", "spec": GASOLINE, "count": 1, "items": ["ron", "sulfur", "benzene"]}
        ],
    }
    status, drawn = await call(http, "POST", "/api/v1/draws", {"plan": plan})
    assert status == 201, drawn
    (task_id,) = drawn["task_ids"]
    (message,) = await read_topic(settings, "tasks", lambda rs: len(rs) >= 1)
    task = json.loads(message.value)
    assert message.key.decode() == task_id and task["draw_id"] == drawn["draw_id"]
    first, second = task["inspectors"]

    tokens = {}
    for inspector in (first, second):
        status, made = await call(http, "POST", f"/api/v1/inspectors/{inspector}/tokens")
        assert status == 201, made
        tokens[inspector] = made["token"]
    status, key = await call(http, "POST", f"/api/v1/labs/{task['lab_id']}/keys")
    assert status == 201, key
    lab_key = key["key"]

    status, mine = await call(http, "GET", "/api/v1/inspectors/me/tasks", token=tokens[first])
    assert status == 200 and [t["task"]["task_id"] for t in mine["tasks"]] == [task_id]
    assert mine["tasks"][0]["state"] == "assigned"

    start = datetime.now(ZoneInfo(settings.timezone)) - timedelta(hours=3)
    seals = {"test": "SEAL-0001", "retained": "SEAL-0002"}
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            tokens[first],
            {"step": "sampling", "where": {"lat": 37.46, "lon": 118.49, "text": "Kenli station"}},
        ),
        (
            tokens[first],
            {
                "step": "sampled",
                "seals": seals,
                "signatures": {"inspectors": [first, second], "enterprise": "Station manager Li"},
            },
        ),
        (tokens[second], {"step": "in-transit", "seals": seals}),
        (lab_key, {"step": "received", "seal_state": "intact", "seals": {"test": "SEAL-0001"}}),
        (lab_key, {"step": "testing"}),
    ]
    for n, (token, body) in enumerate(steps):
        body = {**body, "step_id": f"{task_id}/s{n}", "at": (start + timedelta(minutes=20 * n)).isoformat()}
        status, answer = await call(http, "POST", f"/api/v1/tasks/{task_id}/custody", body, token)
        assert status == 202, (body, answer)
        assert answer["state"] == body["step"]

        async def stored(step: str = body["step"]) -> bool | None:
            status, found = await call(http, "GET", f"/api/v1/tasks/{task_id}/trail")
            return True if status == 200 and found["state"] == step else None

        await eventually(stored)

    measured = datetime.now(ZoneInfo(settings.timezone)).isoformat()
    results = [
        {"result_id": f"R-{task_id}-{item}", "lab_id": task["lab_id"], "task_id": task_id,
         "sample_id": task["sample_id"], "item": item, "value": value, "measured_at": measured}
        for item, value in (("ron", "92.8"), ("sulfur", "6.1"), ("benzene", "0.55"))
    ]  # fmt: skip
    status, ingest = await call(http, "POST", "/api/v1/lab-results", {"results": results}, lab_key)
    assert status == 202 and ingest["accepted"] == 3, ingest

    async def judged() -> dict[str, Any] | None:
        status, found = await call(http, "GET", f"/api/v1/tasks/{task_id}/trail")
        return found if status == 200 and found["state"] == "judged" else None

    trail = await eventually(judged, timeout=60)
    assert [s["step"] for s in trail["steps"]] == [
        "sampling", "sampled", "in-transit", "received", "testing", "reported", "judged",
    ]  # fmt: skip
    assert trail["gaps"] == []
    status, view = await call(http, "GET", f"/api/v1/tasks/{task_id}")
    assert view["verdict"]["outcome"] == "qualified"
    assert view["task"]["inspectors"] == [first, second]

    # The other inspector of the directory may not touch this task.
    status, strangers = await call(http, "GET", "/api/v1/inspectors")
    assert status == 200
    stranger = next(
        i["inspector_id"] for i in strangers["inspectors"] if i["inspector_id"] not in (first, second)
    )
    status, made = await call(http, "POST", f"/api/v1/inspectors/{stranger}/tokens")
    status, answer = await call(
        http, "POST", f"/api/v1/tasks/{task_id}/custody", {"step": "closed"}, made["token"]
    )
    assert status == 403, answer
