"""The audit log: every write through the API and the CLI, accepted or refused, with who, what, when,
the status and the thing before and after; never a key or a secret; append-only; read by the admin."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg
import pytest
from typer.testing import CliRunner

from adapters.store import Store
from spotcheck.cli import app as cli
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, create_task, result

pytestmark = pytest.mark.integration


async def cli_run(settings: Settings, *args: str, code: int = 0) -> Any:
    env = {"SPOTCHECK_HTTP_PORT": str(settings.http_port), "SPOTCHECK_ADMIN_TOKEN": TOKEN, "COLUMNS": "200"}
    done = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    assert done.exit_code == code, done.output
    return done


async def audit(http: aiohttp.ClientSession, **filters: Any) -> list[dict[str, Any]]:
    async with http.get("/api/v1/audit", params={k: str(v) for k, v in filters.items()}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        entries: list[dict[str, Any]] = body["entries"]
        return entries


def session(settings: Settings, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_cli_writes_are_audited_with_before_and_after_and_never_a_key(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    await cli_run(settings, "labs", "add", "LAB-A", "--name", "Audited lab", "--spec", "GB17930-2016:*")
    refused = await cli_run(settings, "labs", "add", "LAB-A", "--name", "again", "--spec", "*", code=2)
    assert "409" in refused.output and "already" in refused.output
    await cli_run(settings, "labs", "update", "LAB-A", "--capacity", "7", "--contact", "Ms Li")
    await cli_run(settings, "labs", "update", "LAB-A", "--spec", "GB17930-2016:*", "--items", "nope", code=2)
    key = (await cli_run(settings, "labs", "key", "create", "LAB-A")).stdout.strip()
    prefix = key.split("_")[1]
    rotated = (await cli_run(settings, "labs", "key", "rotate", "LAB-A", prefix)).stdout.strip()
    await cli_run(settings, "labs", "disable", "LAB-A")
    secret = "s3cret-of-the-center-0123456789"
    await cli_run(
        settings,
        "centers",
        "add",
        "QTC-A",
        "--name",
        "center",
        "--url",
        "http://127.0.0.1:9/hook",
        "--secret",
        secret,
    )

    entries = await audit(http, target_id="LAB-A")
    got = [(e["route"], e["method"], e["status"]) for e in reversed(entries)]
    assert got == [
        ("labs:create", "POST", 201),
        ("labs:create", "POST", 409),
        ("labs:update", "PATCH", 200),
        ("labs:update", "PATCH", 422),
        ("labs:keys_create", "POST", 201),
        ("labs:keys_rotate", "POST", 201),
        ("labs:disable", "POST", 200),
    ]
    created, conflict, updated, bad_update, key_made, rotation, disabled = reversed(entries)
    assert all(e["actor_kind"] == "admin" and e["actor_id"] is None for e in entries)
    assert created["before"] is None and created["after"]["name"] == "Audited lab"
    assert conflict["after"] is None
    assert updated["before"]["daily_capacity"] == 50 and updated["after"]["daily_capacity"] == 7
    assert updated["after"]["contact"] == "Ms Li"
    assert bad_update["before"] is None and bad_update["after"] is None  # rolled back: nothing changed
    assert key_made["after"]["prefix"] == prefix
    assert rotation["before"]["prefix"] == prefix and rotation["after"]["revoked"]["active"] is False
    assert rotation["after"]["new"]["prefix"] == rotated.split("_")[1]
    assert disabled["before"]["enabled"] is True and disabled["after"]["enabled"] is False
    center = (await audit(http, route="centers:create"))[0]
    assert center["target_id"] == "QTC-A" and center["after"]["url"] == "http://127.0.0.1:9/hook"

    everything = json.dumps(await audit(http, limit=1000))
    for hidden in (key, rotated, secret, key.split("_", 2)[2]):
        assert hidden not in everything

    shown = await cli_run(settings, "audit", "--target", "LAB-A", "--refused")
    assert "labs:create" in shown.stdout and "409" in shown.stdout and "201" not in shown.stdout
    as_json = json.loads((await cli_run(settings, "audit", "--route", "labs:update", "--json")).stdout)
    assert [e["status"] for e in as_json] == [422, 200]


async def test_labs_inspectors_and_strangers_are_named_and_refusals_kept(
    settings: Settings, http: aiohttp.ClientSession, store: Store
) -> None:
    from adapters.labs import LabStore

    key = (await LabStore(store).create_key("LAB-2"))["key"]
    theirs = await create_task(http)  # LAB-1's
    mine = await create_task(http, lab_id="LAB-2")
    async with session(settings, key) as lab:
        async with lab.post("/api/v1/lab-results", json=result(mine, "ron", "93")) as resp:
            assert resp.status == 202
        async with lab.post(
            "/api/v1/lab-results", json={**result(theirs, "ron", "93"), "lab_id": "LAB-2"}
        ) as resp:
            assert resp.status == 403
        async with lab.post("/api/v1/labs", json={}) as resp:
            assert resp.status == 403  # not a lab's route
        async with lab.get("/api/v1/audit") as resp:
            assert resp.status == 403  # the admin's only
    async with session(settings, "not-a-token") as stranger:
        async with stranger.post("/api/v1/tasks", json={}) as resp:
            assert resp.status == 401
    async with http.post("/api/v1/tasks", json={"product": "x"}) as resp:
        assert resp.status == 422

    by_lab = await audit(http, actor_kind="lab", actor_id="LAB-2")
    assert [(e["route"], e["status"]) for e in reversed(by_lab)] == [
        ("lab_results:submit", 202),
        ("lab_results:submit", 403),
        ("labs:create", 403),
    ]
    accepted = by_lab[-1]
    assert accepted["detail"]["outcomes"] == {
        result_id: "accepted" for result_id in accepted["detail"]["outcomes"]
    }
    assert accepted["target_id"] in accepted["detail"]["outcomes"]
    anonymous = await audit(http, actor_kind="anonymous")
    assert [(e["route"], e["status"]) for e in anonymous] == [("tasks:create", 401)]
    refused = await audit(http, refused="true", route="tasks:create")
    assert {e["status"] for e in refused} == {401, 422}
    created = await audit(http, route="tasks:create", status=201)
    assert {e["target_id"] for e in created} == {theirs["task_id"], mine["task_id"]}
    async with http.get("/api/v1/audit", params={"actor_kind": "robot"}) as resp:
        assert resp.status == 422 and (await resp.json())["field"] == "actor_kind"


async def test_directory_changes_are_audited_in_their_transaction(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    first = {"product": "motor gasoline", "display_name": "Gasoline", "spec_ids": ["GB17930-2016:VIB:92"]}
    async with http.post("/api/v1/registry/products", json=[first]) as resp:
        assert resp.status == 200, await resp.text()
    changed = {**first, "display_name": "Motor gasoline"}
    async with http.post(
        "/api/v1/registry/products", json=[changed], headers={"X-Spotcheck-Changed-By": "import of 2026-11"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    async with http.delete("/api/v1/registry/products/motor gasoline", params={"reason": "gone"}) as resp:
        assert resp.status == 200, await resp.text()
    entries = await audit(http, method="DELETE")
    assert entries[0]["target_id"] == "motor gasoline"
    assert entries[0]["before"]["motor gasoline"]["display_name"] == "Motor gasoline"
    assert entries[0]["after"] == {"motor gasoline": None}
    upserts = await audit(http, route="registry:upsert")
    assert upserts[0]["named_actor"] == "import of 2026-11"
    assert upserts[0]["before"]["motor gasoline"]["display_name"] == "Gasoline"
    assert upserts[0]["after"]["motor gasoline"]["display_name"] == "Motor gasoline"
    assert upserts[1]["before"] == {"motor gasoline": None}


async def test_the_log_is_append_only(store: Store, http: aiohttp.ClientSession) -> None:
    await create_task(http)
    async with store.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1
        for sql in (
            "UPDATE audit_log SET status = 200",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1
