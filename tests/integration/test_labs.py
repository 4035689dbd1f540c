"""Labs on the real platform: registry and keys, HTTP ingest with every refusal, the Kafka path."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from spotcheck.cli import app as cli
from spotcheck.settings import Settings
from tests.integration.helpers import (
    TOKEN,
    _at_least,
    create_task,
    dead_letters,
    eventually,
    result,
    verdict_of,
)

pytestmark = pytest.mark.integration

DIESEL = "GB19147-2016:VI:0"


async def cli_run(settings: Settings, *args: str) -> Any:
    env = {"SPOTCHECK_HTTP_PORT": str(settings.http_port), "SPOTCHECK_ADMIN_TOKEN": TOKEN}
    done = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    assert done.exit_code == 0, done.output
    return done


async def accredit_sulfur_only(settings: Settings) -> None:
    """LAB-D's accreditation shrinks to diesel sulfur."""
    await cli_run(settings, "labs", "update", "LAB-D", "--product", "motor diesel", "--items", "sulfur")


@pytest.fixture
async def diesel_lab(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Any]:
    """LAB-D, accredited for diesel sulfur and cetane number only, with a fresh key."""
    await cli_run(
        settings,
        "labs",
        "add",
        "LAB-D",
        "--name",
        "Dongying diesel lab",
        "--product",
        "motor diesel",
        "--items",
        "sulfur,cetane_number",
        "--capacity",
        "30",
    )
    made = await cli_run(settings, "labs", "key", "create", "LAB-D")
    key = made.stdout.strip()
    assert key.startswith("sclab_")
    listed = await cli_run(settings, "labs", "key", "list", "LAB-D")
    assert key.split("_")[1] in listed.stdout and key not in listed.stdout  # only the prefix is kept
    return {"lab_id": "LAB-D", "key": key}


def lab_session(settings: Settings, key: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {key}"},
    )


async def test_http_ingest_reaches_a_verdict_and_refuses_what_is_not_the_labs(
    settings: Settings, http: aiohttp.ClientSession, diesel_lab: dict[str, Any]
) -> None:
    mine = await create_task(
        http, spec=DIESEL, product="0# diesel", items=["sulfur", "cetane_number"], lab_id="LAB-D"
    )
    theirs = await create_task(http)  # gasoline, LAB-1
    wide = await create_task(
        http, spec=DIESEL, product="0# diesel", items=["sulfur", "flash_point"], lab_id="LAB-1"
    )
    sulfur = result(mine, "sulfur", "7.2")
    async with lab_session(settings, diesel_lab["key"]) as lab:
        async with lab.post("/api/v1/lab-results", json=sulfur) as resp:
            assert resp.status == 202, await resp.text()
            assert (await resp.json())["outcomes"][0]["status"] == "accepted"
        # the gateway knows stored results; one still on its way is deduplicated downstream
        await eventually(lambda: _results_of(http, mine["task_id"], 1))
        batch = [
            result(mine, "cetane_number", "52.4"),  # accepted: completes the sample
            sulfur,  # the same again: a duplicate
            {**result(mine, "sulfur", "x"), "result_id": "LABD-bad-value"},  # not a number
            {**result(theirs, "ron", "93"), "lab_id": "LAB-D"},  # a task of another lab
            {**result(wide, "flash_point", "61"), "lab_id": "LAB-D"},  # foreign task as well
            result(mine, "pah", "3"),  # not planned for the task
            {**result(mine, "sulfur", "6"), "task_id": "T-1999-000001"},  # unknown task
            {**result(mine, "sulfur", "6"), "lab_id": "LAB-1"},  # claims another lab
        ]
        async with lab.post("/api/v1/lab-results", json={"results": batch}) as resp:
            assert resp.status == 202
            answer = await resp.json()
    statuses = [(o["where"], o["status"], o.get("field")) for o in answer["outcomes"]]
    assert statuses == [
        (0, "accepted", None),
        (1, "duplicate", None),
        (2, "invalid", "value"),
        (3, "forbidden", "task_id"),
        (4, "forbidden", "task_id"),
        (5, "invalid", "item"),
        (6, "invalid", "task_id"),
        (7, "forbidden", "lab_id"),
    ]
    assert (answer["accepted"], answer["duplicates"], answer["rejected"]) == (1, 1, 6)

    view = await eventually(lambda: verdict_of(http, mine["task_id"]))
    assert view["verdict"]["outcome"] == "qualified" and view["verdict"]["lab_id"] == "LAB-D"
    letters = await eventually(lambda: _at_least(dead_letters(http), 6))
    assert {d["source"] for d in letters} == {"http:/api/v1/lab-results"}
    assert any(f"task {theirs['task_id']} is not assigned to lab LAB-D" == d["reason"] for d in letters)


async def test_scope_keys_and_bad_requests(
    settings: Settings, http: aiohttp.ClientSession, diesel_lab: dict[str, Any]
) -> None:
    # a task for an item outside the lab's accreditation cannot even be created
    async with http.post(
        "/api/v1/tasks",
        json={
            "enterprise_id": "E-1",
            "product": "0# diesel",
            "spec": DIESEL,
            "items": ["sulfur", "flash_point"],
            "lab_id": "LAB-D",
        },
    ) as resp:
        body = await resp.json()
        assert resp.status == 422 and body["field"] == "lab_id" and "flash_point" in body["error"]
    task = await create_task(http, spec=DIESEL, product="0# diesel", items=["sulfur"], lab_id="LAB-D")
    async with lab_session(settings, diesel_lab["key"]) as lab:
        async with lab.post("/api/v1/lab-results", json=result(task, "sulfur", 7.2)) as resp:
            body = await resp.json()
            assert resp.status == 422 and body["field"] == "value" and "decimal string" in body["error"]
        async with lab.post("/api/v1/lab-results", data=b"{oops") as resp:
            assert resp.status == 422
        too_many = {"results": [result(task, "sulfur", "1")] * (settings.ingest_max_batch + 1)}
        async with lab.post("/api/v1/lab-results", json=too_many) as resp:
            assert resp.status == 413
        async with lab.get("/api/v1/verdicts") as resp:
            assert resp.status == 403  # a lab key is not the admin's
        async with lab.get("/api/v1/labs/LAB-1/stats") as resp:
            assert resp.status == 403  # nor another lab's
        async with lab.get("/api/v1/labs/LAB-D/stats") as resp:
            stats = await resp.json()
            assert resp.status == 200 and stats["backlog"]["samples"] == 1
    async with lab_session(settings, diesel_lab["key"][:-2] + "xx") as forged:
        async with forged.post("/api/v1/lab-results", json=result(task, "sulfur", "1")) as resp:
            assert resp.status == 401
    prefix = diesel_lab["key"].split("_")[1]
    await cli_run(settings, "labs", "key", "revoke", "LAB-D", prefix)
    async with lab_session(settings, diesel_lab["key"]) as revoked:
        async with revoked.post("/api/v1/lab-results", json=result(task, "sulfur", "1")) as resp:
            assert resp.status == 401


async def test_kafka_results_meet_the_same_registry_checks(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer, diesel_lab: dict[str, Any]
) -> None:
    task = await create_task(
        http, spec=DIESEL, product="0# diesel", items=["sulfur", "cetane_number"], lab_id="LAB-D"
    )
    topic = f"{settings.topic_namespace}.lab-results"
    # LAB-D's scope shrinks after the task was made: cetane number is no longer accredited
    await accredit_sulfur_only(settings)
    await asyncio.sleep(6)  # the processor re-reads the registry every few seconds
    sulfur = result(task, "sulfur", "7.2")
    await lab.send_and_wait(
        topic, json.dumps(sulfur).encode(), key=task["task_id"].encode(), headers=[("lab-id", b"LAB-X")]
    )
    await lab.send_and_wait(
        topic, json.dumps(result(task, "cetane_number", "52")).encode(), key=task["task_id"].encode()
    )
    letters = await eventually(lambda: _at_least(dead_letters(http), 2))
    reasons = sorted(d["reason"] for d in letters)
    assert "outside the accreditation scope of lab LAB-D" in reasons[0]
    assert "the lab-id header says LAB-X, the result says LAB-D" in reasons[1]
    await cli_run(settings, "labs", "disable", "LAB-D")
    async with http.post(
        "/api/v1/tasks",
        json={
            "enterprise_id": "E-1",
            "product": "0# diesel",
            "spec": DIESEL,
            "items": ["sulfur"],
            "lab_id": "LAB-D",
        },
    ) as resp:
        assert resp.status == 422 and "disabled" in (await resp.json())["error"]


async def _results_of(http: aiohttp.ClientSession, task_id: str, n: int) -> bool:
    async with http.get(f"/api/v1/tasks/{task_id}") as resp:
        return len((await resp.json())["results"]) >= n


async def test_a_lab_with_confluent_kafka_as_in_the_readme(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    from confluent_kafka import Producer

    task = await create_task(
        http, spec=DIESEL, product="0# diesel", items=["sulfur", "cetane_number"], lab_id="LAB-2"
    )

    def publish() -> list[Any]:
        producer = Producer(
            {
                "bootstrap.servers": settings.bootstrap,
                "client.id": "LAB-2-lims",
                "partitioner": "murmur2_random",
            }
        )
        errors: list[Any] = []
        for item, value in (("sulfur", "8.3"), ("cetane_number", "51.9")):
            body = result(task, item, value)
            producer.produce(
                f"{settings.topic_namespace}.lab-results",
                key=body["task_id"],
                value=json.dumps(body),
                headers={"lab-id": body["lab_id"]},
                on_delivery=lambda err, _msg: errors.append(err) if err else None,
            )
        assert producer.flush(10) == 0
        return errors

    assert await asyncio.to_thread(publish) == []
    view = await eventually(lambda: verdict_of(http, task["task_id"]))
    assert view["verdict"]["outcome"] == "qualified"


async def test_http_corrections_and_a_scope_that_shrank(
    settings: Settings, http: aiohttp.ClientSession, diesel_lab: dict[str, Any]
) -> None:
    task = await create_task(
        http, spec=DIESEL, product="0# diesel", items=["sulfur", "cetane_number"], lab_id="LAB-D"
    )
    sulfur, cetane = result(task, "sulfur", "10.6"), result(task, "cetane_number", "51.2")
    async with lab_session(settings, diesel_lab["key"]) as lab:
        async with lab.post("/api/v1/lab-results", json={"results": [sulfur, cetane]}) as resp:
            assert resp.status == 202 and (await resp.json())["accepted"] == 2
        first = await eventually(lambda: verdict_of(http, task["task_id"]))
        assert first["verdict"]["outcome"] == "unqualified"
        fix = result(task, "sulfur", "9.6", amends=sulfur["result_id"], reason="re-measured")
        async with lab.post("/api/v1/lab-results", json=fix) as resp:
            assert resp.status == 202
        second = await eventually(lambda: verdict_of(http, task["task_id"], version=2))
        assert second["verdict"]["outcome"] == "qualified"
        history = {r["result_id"]: r for r in second["results"]}
        assert history[fix["result_id"]]["amends"] == sulfur["result_id"]  # both kept, linked
        assert sulfur["result_id"] in history

        # the accreditation no longer covers cetane number: a new result for it is refused
        await accredit_sulfur_only(settings)
        late = result(task, "cetane_number", "51.0", amends=cetane["result_id"], reason="re-run")
        async with lab.post("/api/v1/lab-results", json=late) as resp:
            body = await resp.json()
            assert resp.status == 403 and "outside the accreditation scope" in body["error"]


async def test_adding_a_lab_twice_is_a_conflict_and_updates_are_explicit(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    body = {
        "lab_id": "LAB-U",
        "name": "Update lab",
        "scope": [{"spec": "GB17930-2016:*"}],
        "contact": "Mr Wu",
    }
    async with http.post("/api/v1/labs", json=body) as resp:
        assert resp.status == 201 and resp.headers["Location"] == "/api/v1/labs/LAB-U"
    async with http.post("/api/v1/labs", json={**body, "name": "overwritten?"}) as resp:
        answer = await resp.json()
        assert resp.status == 409 and answer["field"] == "lab_id", answer
    async with http.post("/api/v1/labs/LAB-U/disable") as resp:
        assert resp.status == 200
    replacement = {"name": "Renamed lab", "scope": [{"product": "motor diesel"}], "daily_capacity": 9}
    async with http.put("/api/v1/labs/LAB-U", json=replacement) as resp:
        lab = await resp.json()
        assert resp.status == 200, lab
    assert lab == {
        "lab_id": "LAB-U",
        "name": "Renamed lab",
        "scope": [{"product": "motor diesel"}],
        "daily_capacity": 9,
        "enabled": False,  # enabling has its own route
    }
    async with http.patch("/api/v1/labs/LAB-U", json={"contact": "Ms Sun"}) as resp:
        lab = await resp.json()
        assert resp.status == 200 and lab["contact"] == "Ms Sun" and lab["name"] == "Renamed lab", lab
    for path, change, field in (
        ("/api/v1/labs/LAB-U", {}, "body"),
        ("/api/v1/labs/LAB-U", {"name": None}, "name"),
        ("/api/v1/labs/LAB-U", {"lab_id": "LAB-V"}, "lab_id"),
        ("/api/v1/labs/LAB-U", {"scope": [{"spec": "*", "items": ["no_such_item"]}]}, "scope"),
    ):
        async with http.patch(path, json=change) as resp:
            answer = await resp.json()
            assert resp.status == 422 and answer["field"] == field, answer
    async with http.put("/api/v1/labs/LAB-NONE", json=replacement) as resp:
        assert resp.status == 404
    async with http.patch("/api/v1/labs/LAB-NONE", json={"name": "x"}) as resp:
        assert resp.status == 404
    shown = await cli_run(settings, "labs", "update", "LAB-U", "--name", "CLI lab", "--capacity", "3")
    assert json.loads(shown.stdout)["name"] == "CLI lab" and json.loads(shown.stdout)["daily_capacity"] == 3
