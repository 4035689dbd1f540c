"""Draws on the real broker and database: the demo directory → a draw → tasks on the topic and in the
store → re-run from the published inputs; cancel and redraw; the platform's history as exclusions;
campaign rounds."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from adapters.registry import load_demo_registry
from adapters.store import Store
from spotcheck.cli.draws import draw_app
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, eventually, read_topic, small_directory

pytestmark = pytest.mark.integration

GASOLINE = "GB17930-2016:VIB:92"
DIESEL = "GB19147-2016:VI:0"
SEED = "5eed" * 16


def plan(plan_id: str = "P-2026-Q4-FUEL", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "plan_id": plan_id,
        "draw_date": datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat(),
        "categories": [
            {
                "product": "motor gasoline",
                "spec": GASOLINE,
                "count": 6,
                "items": ["ron", "sulfur", "benzene"],
            },
            {"product": "motor diesel", "spec": DIESEL, "count": 3},
        ],
        "strata": ["district"],
    }
    body.update(kw)
    return body


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as resp:
        return resp.status, await resp.json()


async def cli(settings: Settings, *args: str) -> Any:
    """The CLI in a thread (it calls the API served by this test's event loop)."""
    api = f"http://{settings.http_host}:{settings.http_port}"
    return await asyncio.to_thread(CliRunner().invoke, draw_app, [*args, "--api", api, "--token", TOKEN])


async def test_a_draw_creates_published_tasks_and_verifies_from_its_inputs(
    settings: Settings, store: Store, http: aiohttp.ClientSession, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    counts = await load_demo_registry(store, settings)
    assert counts["enterprises"] > 1000

    status, record = await post(http, "/api/v1/draws", {"plan": plan(), "seed": SEED})
    assert status == 201, record
    assert record["schema"] == "draw-record/1" and record["status"] == "published"
    assert record["seed"] == SEED and record["selected"] == 9 and len(record["task_ids"]) == 9

    tasks = await read_topic(settings, "tasks", lambda rs: len(rs) >= 9)
    on_topic = {r.key.decode(): json.loads(r.value) for r in tasks}
    assert set(on_topic) == set(record["task_ids"])
    for task in on_topic.values():
        assert task["draw_id"] == record["draw_id"] and task["kind"] == "random"
        assert len(set(task["inspectors"])) >= 2 and task["lab_id"] in {"LAB-1", "LAB-2"}
        assert task["sampling_due"] is not None
    gasoline = [t for t in on_topic.values() if t["spec"] == GASOLINE]
    assert len(gasoline) == 6 and all(t["items"] == ["ron", "sulfur", "benzene"] for t in gasoline)
    async with http.get(f"/api/v1/tasks/{record['task_ids'][0]}") as resp:
        assert resp.status == 200
        assert (await resp.json())["task"]["draw_id"] == record["draw_id"]

    published = await read_topic(settings, "draws", lambda rs: len(rs) >= 1)
    assert json.loads(published[0].value)["result_digest"] == record["result_digest"]

    async with http.get(f"/api/v1/draws/{record['draw_id']}") as resp:
        shown = await resp.json()
    enterprises = {s["enterprise_id"] for s in shown["result"]["selections"]}
    assert {t["enterprise_id"] for t in on_topic.values()} == enterprises

    verified = await cli(settings, "verify", record["draw_id"])
    assert verified.exit_code == 0, verified.output
    assert f"{record['draw_id']} is identical" in verified.output

    exported = await cli(settings, "export", record["draw_id"])
    assert exported.exit_code == 0, exported.output
    inputs = json.loads(exported.output)
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    offline = CliRunner().invoke(draw_app, ["verify", "--inputs", str(tmp_path / "inputs.json")])
    assert offline.exit_code == 0, offline.output

    # Steering the directory (one selected enterprise taken out) is seen.
    chosen = shown["result"]["selections"][0]["enterprise_id"]
    inputs["snapshot"]["enterprises"] = [
        e for e in inputs["snapshot"]["enterprises"] if e["enterprise_id"] != chosen
    ]
    (tmp_path / "steered.json").write_text(json.dumps(inputs))
    steered = CliRunner().invoke(draw_app, ["verify", "--inputs", str(tmp_path / "steered.json")])
    assert steered.exit_code == 1, steered.output
    assert "DIFFERENT" in steered.output and "does not match" in steered.output

    # A published draw cannot be edited, even in the database.
    async with store.pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="cannot be edited"):
            await conn.execute("UPDATE draws SET seed = 'ff' WHERE draw_id = $1", record["draw_id"])
        with pytest.raises(asyncpg.RaiseError, match="cannot be deleted"):
            await conn.execute("DELETE FROM draws WHERE draw_id = $1", record["draw_id"])


async def test_history_of_the_platform_excludes_and_rotates_inspectors(
    settings: Settings, store: Store, http: aiohttp.ClientSession, producer: AIOKafkaProducer
) -> None:
    ids = await small_directory(store, producer, settings)
    gasoline = [{"product": "motor gasoline", "spec": GASOLINE, "count": 1}]
    status, first = await post(
        http,
        "/api/v1/draws",
        {"plan": plan("P-1", categories=gasoline, higher_level=[ids[1]], recent_months=12), "seed": SEED},
    )
    assert status == 201, first
    async with http.get(f"/api/v1/draws/{first['draw_id']}") as resp:
        result = (await resp.json())["result"]
    (picked,) = result["selections"]
    assert picked["enterprise_id"] != ids[1]
    assert {"enterprise_id": ids[1], "product": "motor gasoline", "reason": "higher-level"} in result[
        "excluded"
    ]
    if picked["enterprise_id"] == ids[0]:
        assert "INS-5" not in picked["inspectors"]  # 回避

    # The next plan: the enterprise checked today is a recent check; with no recent-check rule it may
    # be drawn again, but never with the inspectors of its last check.
    status, second = await post(
        http,
        "/api/v1/draws",
        {"plan": plan("P-2", categories=[{**gasoline[0], "count": 3}], recent_months=12), "seed": SEED},
    )
    assert status == 201, second
    async with http.get(f"/api/v1/draws/{second['draw_id']}") as resp:
        result2 = (await resp.json())["result"]
    assert {
        "enterprise_id": picked["enterprise_id"],
        "product": "motor gasoline",
        "reason": "recent-check",
    } in result2["excluded"]

    status, third = await post(
        http,
        "/api/v1/draws",
        {"plan": plan("P-3", categories=[{**gasoline[0], "count": 3}], recent_months=0), "seed": SEED},
    )
    assert status == 201, third
    async with http.get(f"/api/v1/draws/{third['draw_id']}") as resp:
        again = {s["enterprise_id"]: s for s in (await resp.json())["result"]["selections"]}
    assert picked["enterprise_id"] in again
    assert not set(again[picked["enterprise_id"]]["inspectors"]) & set(picked["inspectors"])


async def test_cancel_and_redraw_keep_both_and_refuse_what_is_taken(
    settings: Settings, store: Store, http: aiohttp.ClientSession, producer: AIOKafkaProducer
) -> None:
    await small_directory(store, producer, settings)
    gasoline = [{"product": "motor gasoline", "spec": GASOLINE, "count": 2}]
    status, drawn = await post(
        http, "/api/v1/draws", {"plan": plan("P-C", categories=gasoline), "seed": SEED}
    )
    assert status == 201, drawn

    status, answer = await post(http, f"/api/v1/draws/{drawn['draw_id']}/cancel", {"reason": " "})
    assert status == 422 and answer["field"] == "reason"
    status, cancelled = await post(
        http, f"/api/v1/draws/{drawn['draw_id']}/cancel", {"reason": "wrong quarter"}
    )
    assert status == 200, cancelled
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "wrong quarter"
    steps = await read_topic(settings, "custody", lambda rs: len(rs) >= 2)
    assert {r.key.decode() for r in steps} == set(drawn["task_ids"])
    assert all(json.loads(r.value)["step"] == "cancelled" for r in steps)
    status, answer = await post(http, f"/api/v1/draws/{drawn['draw_id']}/cancel", {"reason": "again"})
    assert status == 409 and "already cancelled" in answer["error"]

    status, redrawn = await post(
        http, f"/api/v1/draws/{drawn['draw_id']}/redraw", {"reason": "wrong quarter"}
    )
    assert status == 201, redrawn
    assert redrawn["redraw_of"] == drawn["draw_id"] and redrawn["seed"] != drawn["seed"]
    status, answer = await post(http, f"/api/v1/draws/{drawn['draw_id']}/redraw", {"reason": "twice"})
    assert status == 409 and "already redrawn" in answer["error"], answer
    async with http.get("/api/v1/draws") as resp:
        listed = {d["draw_id"]: d["status"] for d in (await resp.json())["draws"]}
    assert listed == {drawn["draw_id"]: "cancelled", redrawn["draw_id"]: "published"}

    # A draw whose sample is taken cannot be cancelled.
    taken = redrawn["task_ids"][0]
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO task_states (task_id, state, assigned, updated_at)"
            " VALUES ($1, 'sampled', '{}', now())"
            " ON CONFLICT (task_id) DO UPDATE SET state = 'sampled'",
            taken,
        )
    status, answer = await post(http, f"/api/v1/draws/{redrawn['draw_id']}/cancel", {"reason": "late"})
    assert status == 409 and f"{taken} sampled" in answer["error"]


async def test_bad_plans_are_refused_with_the_field(
    settings: Settings, store: Store, http: aiohttp.ClientSession, producer: AIOKafkaProducer
) -> None:
    await small_directory(store, producer, settings)
    wrong_product = [{"product": "motor diesel", "spec": GASOLINE, "count": 1}]
    cases = [
        ({"plan": plan(categories=wrong_product)}, "categories"),
        ({"plan": plan(categories=[{"product": "motor gasoline", "spec": GASOLINE}])}, "plan.categories.0"),
        ({"plan": plan(), "seed": "abc"}, "seed"),
        ({"plan": plan(), "steer": True}, "steer"),
    ]
    for body, field in cases:
        status, answer = await post(http, "/api/v1/draws", body)
        assert status == 422, (body, answer)
        assert answer["field"] == field, answer
    async with http.get("/api/v1/draws") as resp:
        assert (await resp.json())["draws"] == []

    async def letters() -> list[dict[str, Any]] | None:
        async with http.get("/api/v1/dead-letters?source=http:/api/v1/draws") as resp:
            found = (await resp.json())["dead_letters"]
        return found if len(found) >= len(cases) else None

    kept = await eventually(letters)
    assert sorted(json.loads(letter["payload"]).get("seed", "") for letter in kept) == ["", "", "", "abc"]
    assert any("is for motor gasoline, not motor diesel" in letter["reason"] for letter in kept)


async def test_a_campaign_round_is_drawn_once_as_special_tasks(
    settings: Settings, store: Store, http: aiohttp.ClientSession, producer: AIOKafkaProducer
) -> None:
    await small_directory(store, producer, settings)
    today = datetime.now(ZoneInfo(settings.timezone)).date()
    campaign = {
        "campaign_id": "FUEL-STATIONS",
        "name": "Motor fuel at filling stations",
        "plan": {
            "categories": [
                {"product": "motor gasoline", "spec": GASOLINE, "count": 2, "items": ["sulfur", "methanol"]}
            ],
            "recent_months": 0,
        },
        "recurrence": {"every": "week", "day": today.isoweekday()},
        "starts": (today.replace(day=1)).isoformat(),
    }
    status, saved = await post(http, "/api/v1/campaigns", campaign)
    assert status == 201, saved
    status, ran = await post(http, "/api/v1/campaigns/run-due", None)
    assert status == 200
    status, again = await post(http, "/api/v1/campaigns/run-due", None)
    assert again["draws"] == []
    async with http.get("/api/v1/draws?campaign_id=FUEL-STATIONS") as resp:
        rounds = (await resp.json())["draws"]
    assert len(rounds) == 1 and rounds[0]["draw_date"] == today.isoformat()
    assert rounds[0]["plan_id"] == f"FUEL-STATIONS-{today:%Y%m%d}"

    async def special_tasks() -> list[dict[str, Any]] | None:
        found = []
        for task_id in rounds[0]["task_ids"]:
            async with http.get(f"/api/v1/tasks/{task_id}") as resp:
                found.append((await resp.json())["task"])
        return found or None

    tasks = await eventually(special_tasks)
    assert len(tasks) == 2
    assert all(t["kind"] == "special" and t["campaign_id"] == "FUEL-STATIONS" for t in tasks)
    assert all(t["items"] == ["sulfur", "methanol"] for t in tasks)

    status, answer = await post(
        http, "/api/v1/campaigns", {**campaign, "plan": {"plan_id": "X", "categories": []}}
    )
    assert status == 422 and "plan_id" in answer["error"]
    assert date.fromisoformat(rounds[0]["draw_date"]) == today
