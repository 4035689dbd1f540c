"""The chain of custody on the real platform: inspectors' tokens, steps through the API and Kafka, the
custody processor as the authority, the trail and its gaps, verdicts that judge a task."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from adapters.api.custody import SOURCE
from adapters.store import Store
from spotcheck.cli import app as cli
from spotcheck.settings import Settings
from tests.integration.helpers import (
    GASOLINE_ITEMS,
    TOKEN,
    create_task,
    dead_letters,
    eventually,
    result,
    send,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
SAMPLED = {
    "step": "sampled",
    "seals": {"test": "SEAL-001", "retained": "SEAL-002"},
    "signatures": {"inspectors": ["INS-1", "INS-2"], "enterprise": "Wang Li (station manager)"},
    "where": {"lat": 37.4346, "lon": 118.6747, "text": "Station 12, Dongying District"},
}


@pytest.fixture
async def directory(store: Store) -> list[str]:
    """Inspectors INS-1, INS-2 and INS-3 in the directory; INS-9 removed from it."""
    async with store.pool.acquire() as conn:
        for inspector_id in ("INS-1", "INS-2", "INS-3", "INS-9"):
            await conn.execute(
                "INSERT INTO inspectors (inspector_id, name, unit, district, record, version, updated_at,"
                " removed_at) VALUES ($1, $2, 'Dongying bureau', 'Dongying District', '{}'::jsonb, 1, now(),"
                " CASE WHEN $1 = 'INS-9' THEN now() END)",
                inspector_id,
                f"inspector {inspector_id}",
            )
    return ["INS-1", "INS-2", "INS-3"]


async def cli_run(settings: Settings, *args: str, token: str = TOKEN, code: int = 0) -> Any:
    env = {
        "SPOTCHECK_HTTP_PORT": str(settings.http_port),
        "SPOTCHECK_ADMIN_TOKEN": TOKEN,
        "SPOTCHECK_TOKEN": token,
        "COLUMNS": "200",
    }
    done = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    assert done.exit_code == code, done.output
    return done


def session(settings: Settings, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {token}"},
    )


async def token_for(settings: Settings, inspector_id: str) -> str:
    made = await cli_run(settings, "inspectors", "token", "create", inspector_id)
    token: str = made.stdout.strip()
    assert token.startswith("scins_")
    return token


async def lab_key(http: aiohttp.ClientSession, lab_id: str) -> str:
    async with http.post(f"/api/v1/labs/{lab_id}/keys") as resp:
        assert resp.status == 201
        key: str = (await resp.json())["key"]
        return key


async def post(who: aiohttp.ClientSession, task_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with who.post(f"/api/v1/tasks/{task_id}/custody", json=body) as resp:
        return resp.status, await resp.json()


async def state_of(http: aiohttp.ClientSession, task_id: str) -> str:
    async with http.get(f"/api/v1/tasks/{task_id}") as resp:
        assert resp.status == 200
        state: str = (await resp.json())["state"]
        return state


async def reach(http: aiohttp.ClientSession, task_id: str, state: str) -> None:
    async def there() -> bool:
        return await state_of(http, task_id) == state

    await eventually(there)


async def take(
    who: aiohttp.ClientSession, http: aiohttp.ClientSession, task_id: str, body: dict[str, Any]
) -> None:
    """One step through the API, accepted, then stored by the processor."""
    status, answer = await post(who, task_id, body)
    assert status == 202, answer
    assert answer["state"] == body["step"] and not answer["duplicate"]
    await reach(http, task_id, body["step"])


async def trail(who: aiohttp.ClientSession, task_id: str) -> dict[str, Any]:
    async with who.get(f"/api/v1/tasks/{task_id}/trail") as resp:
        assert resp.status == 200, await resp.text()
        found: dict[str, Any] = await resp.json()
        return found


async def letters_with(http: aiohttp.ClientSession, source: str, n: int) -> list[dict[str, Any]]:
    async def found() -> list[dict[str, Any]] | None:
        letters = [d for d in await dead_letters(http) if d["source"] == source]
        return letters if len(letters) >= n else None

    return await eventually(found)


def step(task_id: str, target: str, at: datetime, **kw: Any) -> dict[str, Any]:
    """A custody/1 step as another system would publish it on the topic."""
    body = {
        "schema": "custody/1",
        "step_id": f"K-{uuid.uuid4().hex[:10]}",
        "task_id": task_id,
        "step": target,
        "actor": "INS-1",
        "actor_role": "inspector",
        "at": at.isoformat(),
    }
    body.update(kw)
    return body


async def publish(
    lab: AIOKafkaProducer, settings: Settings, *bodies: dict[str, Any] | bytes, key: str
) -> None:
    topic = f"{settings.topic_namespace}.custody"
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await lab.send_and_wait(topic, raw, key=key.encode())


async def test_a_whole_trail_by_inspectors_a_lab_and_the_planner(
    settings: Settings, http: aiohttp.ClientSession, directory: list[str]
) -> None:
    task = await create_task(http, inspectors=["INS-1", "INS-2"])
    tid = task["task_id"]
    assert await state_of(http, tid) == "assigned"
    ins1, key = await token_for(settings, "INS-1"), await lab_key(http, "LAB-1")
    async with session(settings, ins1) as inspector, session(settings, key) as lab:
        async with inspector.get("/api/v1/inspectors/me/tasks") as resp:
            mine = (await resp.json())["tasks"]
        assert [(t["task"]["task_id"], t["state"]) for t in mine] == [(tid, "assigned")]
        await take(inspector, http, tid, {"step": "sampling", "where": {"text": "Station 12 gate"}})
        # the sampling form through the CLI with the inspector's token
        done = await cli_run(
            settings,
            "task", "step", tid, "sampled",
            "--seal-test", "SEAL-001", "--seal-retained", "SEAL-002",
            "--signed-by", "INS-1", "--signed-by", "INS-2",
            "--enterprise-signature", "Wang Li (station manager)",
            "--lat", "37.4346", "--lon", "118.6747", "--place", "Station 12, Dongying District",
            token=ins1,
        )  # fmt: skip
        assert json.loads(done.stdout)["step"]["actor"] == "INS-1"
        await reach(http, tid, "sampled")
        await take(inspector, http, tid, {"step": "in-transit", "seals": {"test": "SEAL-001"}})
        await take(
            lab, http, tid, {"step": "received", "seal_state": "intact", "seals": {"test": "SEAL-001"}}
        )
        await take(lab, http, tid, {"step": "testing"})
        await take(lab, http, tid, {"step": "reported"})
        await take(http, http, tid, {"step": "judged", "actor": "PL-7"})
        await take(http, http, tid, {"step": "closed"})
        for who in (inspector, lab, http):
            found = await trail(who, tid)
            assert found["state"] == "closed" and found["gaps"] == []
            assert found["sample_id"] == task["sample_id"]
        assert [(s["step"], s["actor"], s["actor_role"]) for s in found["steps"]] == [
            ("sampling", "INS-1", "inspector"),
            ("sampled", "INS-1", "inspector"),
            ("in-transit", "INS-1", "inspector"),
            ("received", "LAB-1", "lab"),
            ("testing", "LAB-1", "lab"),
            ("reported", "LAB-1", "lab"),
            ("judged", "PL-7", "planner"),
            ("closed", "admin", "planner"),
        ]
        assert found["steps"][1]["seals"] == {"test": "SEAL-001", "retained": "SEAL-002"}
        assert found["steps"][1]["where"]["lat"] == 37.4346
        printed = await cli_run(settings, "task", "trail", tid, token=ins1)
        assert "no gaps" in printed.stdout and "SEAL-001 / SEAL-002" in printed.stdout
        async with inspector.get("/api/v1/inspectors/me/tasks") as resp:
            (closed,) = (await resp.json())["tasks"]
        assert closed["state"] == "closed" and closed["received_at"] is not None
        assert closed["report_due"] is not None


async def test_refusals_name_the_state_and_become_dead_letters(
    settings: Settings, http: aiohttp.ClientSession, directory: list[str]
) -> None:
    task = await create_task(http, inspectors=["INS-1", "INS-2"])
    tid = task["task_id"]
    ins1, ins3 = await token_for(settings, "INS-1"), await token_for(settings, "INS-3")
    other_lab = await lab_key(http, "LAB-2")
    async with session(settings, ins1) as inspector, session(settings, ins3) as stranger:
        status, answer = await post(inspector, tid, {"step": "in-transit"})
        assert status == 409, answer
        assert answer["state"] == "assigned" and answer["field"] == "step"
        assert answer["allowed"] == ["cancelled", "not-found", "not-sampleable", "refused", "sampling"]
        assert "is assigned; in-transit may not follow" in answer["error"]
        status, answer = await post(stranger, tid, {"step": "sampling"})
        assert status == 403 and answer["error"] == f"task {tid} is not assigned to inspector INS-3"
        async with session(settings, other_lab) as lab:
            status, answer = await post(lab, tid, {"step": "received"})
            assert status == 403 and answer["error"] == f"task {tid} is not assigned to lab LAB-2"
        status, answer = await post(inspector, tid, {"step": "cancelled", "reason": "wrong shop"})
        assert status == 403 and "done by planner or system, not by inspector" in answer["error"]
        status, answer = await post(inspector, tid, {"step": "refused"})
        assert status == 422 and "must give a reason" in answer["error"]
        status, answer = await post(inspector, tid, {"step": "sampling", "actor": "INS-2"})
        assert status == 422 and answer["field"] == "actor"
        status, answer = await post(inspector, tid, {"step": "sampling", "where": {"lat": 91, "lon": 0}})
        assert status == 422 and answer["field"] == "where.lat"
        status, answer = await post(inspector, "T-1999-000001", {"step": "sampling"})
        assert status == 404
        async with inspector.get("/api/v1/verdicts") as resp:  # not an inspector's route
            assert resp.status == 403
        letters = await letters_with(http, SOURCE, 8)
        assert {d["key"] for d in letters} == {tid, "T-1999-000001"}
        assert any("in-transit may not follow" in d["reason"] for d in letters)
        assert await state_of(http, tid) == "assigned"  # nothing was published

        listed = await cli_run(settings, "inspectors", "token", "list", "INS-1")
        (only,) = json.loads(listed.stdout)
        assert only["active"] and ins1.split("_")[1] == only["prefix"] and ins1 not in listed.stdout
        await cli_run(settings, "inspectors", "token", "revoke", "INS-1", only["prefix"])
        async with inspector.get(f"/api/v1/tasks/{tid}/trail") as resp:
            assert resp.status == 401
    refused = await cli_run(settings, "inspectors", "token", "create", "INS-9", code=2)
    assert "not in the directory" in refused.output
    await cli_run(settings, "inspectors", "token", "create", "INS-404", code=2)


async def test_the_processor_refuses_what_kafka_brings_and_ignores_resends(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    task = await create_task(http, inspectors=["INS-1", "INS-2"])
    tid = task["task_id"]
    custody = f"{settings.topic_namespace}.custody"
    sampling = step(tid, "sampling", T0)
    await publish(lab, settings, sampling, sampling, key=tid)  # the same step twice: taken once
    await reach(http, tid, "sampling")
    bad: list[dict[str, Any] | bytes] = [
        step(tid, "received", T0, actor="LAB-1", actor_role="lab", lab_id="LAB-1",
             seal_state="intact", seals={"test": "S"}),  # illegal: the task is sampling
        step(tid, "sampled", T0, actor="INS-9", **{k: v for k, v in SAMPLED.items() if k != "step"}),
        {**sampling, "at": (T0 + timedelta(minutes=5)).isoformat()},  # a reused step_id
        b"{not json",
        step("T-1999-000001", "sampling", T0),  # unknown task
    ]  # fmt: skip
    await publish(lab, settings, *bad, key=tid)
    letters = await letters_with(http, custody, 5)
    assert len(letters) == 5  # the exact resend was no refusal
    reasons = sorted(d["reason"] for d in letters)
    assert any(f"task {tid} is sampling; received may not follow" in r for r in reasons), reasons
    assert any("inspector INS-9 is not assigned" in r for r in reasons), reasons
    assert any("already used for another step" in r for r in reasons), reasons
    assert any(r.startswith("invalid custody/1") for r in reasons), reasons
    assert any("unknown task T-1999-000001" in r for r in reasons), reasons
    found = await trail(http, tid)
    assert [s["step_id"] for s in found["steps"]] == [sampling["step_id"]]
    assert found["state"] == "sampling" and await state_of(http, tid) == "sampling"


async def test_gaps_a_changed_seal_a_slow_transit_and_a_step_recorded_late(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer, directory: list[str]
) -> None:
    task = await create_task(http, inspectors=["INS-1", "INS-2"])
    tid = task["task_id"]
    form = {k: v for k, v in SAMPLED.items() if k != "step"}
    await publish(
        lab,
        settings,
        step(tid, "sampling", T0),
        step(tid, "sampled", T0 + timedelta(hours=1), **form),
        step(tid, "in-transit", T0 + timedelta(hours=2)),
        step(tid, "received", T0 + timedelta(hours=60), actor="LAB-1", actor_role="lab", lab_id="LAB-1",
             seal_state="intact", seals={"test": "SEAL-777"}),
        key=tid,
    )  # fmt: skip
    await reach(http, tid, "received")
    found = await trail(http, tid)
    assert [g["kind"] for g in found["gaps"]] == ["seal-changed", "slow-transit"]
    assert found["gaps"][0]["detail"] == "test portion sealed SEAL-001 at sampling, SEAL-777 at received"
    assert "more than 2 days" in found["gaps"][1]["detail"]

    # A task planned without inspectors: the planner assigns INS-1 and INS-2, then INS-1 records the
    # start of sampling late, with a time before the assignment: at that time INS-1 was nobody's.
    planned = await create_task(http)
    pid = planned["task_id"]
    assert await state_of(http, pid) == "planned"
    now = datetime.now(UTC)
    await take(http, http, pid, {"step": "assigned", "inspectors": ["INS-1", "INS-2"], "actor": "PL-7"})
    async with session(settings, await token_for(settings, "INS-1")) as inspector:
        await take(inspector, http, pid, {"step": "sampling", "at": (now - timedelta(hours=3)).isoformat()})
        found = await trail(inspector, pid)
    assert found["state"] == "sampling"
    kinds = [g["kind"] for g in found["gaps"]]
    assert kinds == ["missing-step", "not-permitted", "out-of-order"], found["gaps"]
    assert "INS-1 is not assigned" in found["gaps"][1]["detail"]


async def to_received(lab: AIOKafkaProducer, settings: Settings, tid: str) -> None:
    """A task's sample sampled, shipped and received, as steps on the custody topic."""
    form = {k: v for k, v in SAMPLED.items() if k != "step"}
    await publish(
        lab,
        settings,
        step(tid, "sampling", T0),
        step(tid, "sampled", T0 + timedelta(hours=1), **form),
        step(tid, "in-transit", T0 + timedelta(hours=2)),
        step(tid, "received", T0 + timedelta(hours=5), actor="LAB-1", actor_role="lab", lab_id="LAB-1",
             seal_state="intact", seals={"test": "SEAL-001"}),
        key=tid,
    )  # fmt: skip


async def test_a_verdict_judges_a_received_task_once(
    settings: Settings, http: aiohttp.ClientSession, lab: AIOKafkaProducer
) -> None:
    task, other = await create_task(http, inspectors=["INS-1", "INS-2"]), await create_task(http)
    tid = task["task_id"]
    await to_received(lab, settings, tid)
    await reach(http, tid, "received")
    values = {"ron": "93.1", "sulfur": "7.5", "benzene": "0.4"}
    await send(lab, settings, *(result(task, item, values[item]) for item in GASOLINE_ITEMS))
    await reach(http, tid, "judged")
    found = await trail(http, tid)
    assert found["gaps"] == []
    system = [(s["step"], s["step_id"], s["actor_role"]) for s in found["steps"][-2:]]
    assert system == [
        ("reported", f"{tid}/v1/reported", "system"),
        ("judged", f"{tid}/v1/judged", "system"),
    ]
    async with http.get(f"/api/v1/tasks/{tid}") as resp:
        view = await resp.json()
    assert view["state"] == "judged" and view["verdict"]["outcome"] == "qualified"

    # The verdict again, then on the same partition a verdict for a task with no custody trail
    # (it stays planned) and one for a task of the same lab that is received (it gets judged):
    # once that one is judged, the processor is past the others, which changed nothing.
    third = await create_task(http, inspectors=["INS-1", "INS-2"])
    await to_received(lab, settings, third["task_id"])
    await reach(http, third["task_id"], "received")
    verdict = view["verdict"]
    topic = f"{settings.topic_namespace}.verdicts"
    again = await lab.send_and_wait(topic, json.dumps(verdict).encode(), key=tid.encode())
    for t in (other, third):
        forged = {**verdict, "task_id": t["task_id"], "sample_id": t["sample_id"]}
        forged["verdict_id"] = f"{t['task_id']}/v1"
        await lab.send_and_wait(
            topic, json.dumps(forged).encode(), key=t["task_id"].encode(), partition=again.partition
        )
    await reach(http, third["task_id"], "judged")
    assert await trail(http, tid) == found
    assert await state_of(http, other["task_id"]) == "planned"
