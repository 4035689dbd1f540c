"""The HTTP API's answers to bad requests, and the CLI that drives it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from spotcheck.cli import app as cli
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN

pytestmark = pytest.mark.integration


async def post(http: aiohttp.ClientSession, body: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with http.post("/api/v1/tasks", json=body, **kw) as resp:
        return resp.status, await resp.json()


async def test_tokens_are_required(settings: Settings, http: aiohttp.ClientSession) -> None:
    base = f"http://{settings.http_host}:{settings.http_port}"
    async with aiohttp.ClientSession(base) as anonymous:
        async with anonymous.get("/api/v1/verdicts") as resp:
            assert resp.status == 401
        async with anonymous.get("/api/v1/verdicts", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "token not accepted"
        async with anonymous.get("/healthz") as resp:
            body = await resp.json()
            # no stream processor runs in this test: healthz must say so and fail
            assert resp.status == 503, body
            async with anonymous.get("/readyz") as ready:  # this process can serve all the same
                assert ready.status == 200
                assert (await ready.json())["checks"] == {
                    "broker": {"state": "up"},
                    "database": {"state": "up"},
                }
            assert body["status"] == "unavailable" and resp.headers["Retry-After"]
            outbox = body["checks"].pop("outbox")
            assert outbox["state"] == "up" and outbox["failed"] == 0, outbox
            assert body["checks"] == {
                "broker": {"state": "up"},
                "database": {"state": "up"},
                "relay": {"state": "up"},
                "verdicts": {"state": "up"},
                "store-sink": {"state": "up"},
                "center-push": {"state": "up"},
                "custody": {"state": "up"},
                "streams": {"state": "down", "reason": "no heartbeat seen"},
                "set-aside": {"state": "up", "set_aside_last_hour": 0},
            }


@pytest.mark.parametrize(
    ("change", "status", "field", "words"),
    [
        ({"spec": "GB17930-2016:VIB:93"}, 422, "spec", "unknown spec"),
        ({"items": ["ron", "sulphur"]}, 422, "items", "sulphur"),
        ({"items": ["ron", "ron"]}, 422, "items", "more than once"),
        ({"lab_id": ""}, 422, "lab_id", "at least 1 character"),
        ({"colour": "red"}, 422, "colour", "Extra inputs"),
    ],
)
async def test_bad_task_requests_name_the_field(
    http: aiohttp.ClientSession,
    change: dict[str, Any],
    status: int,
    field: str,
    words: str,
) -> None:
    body = {
        "enterprise_id": "E-1",
        "product": "92#",
        "spec": "GB17930-2016:VIB:92",
        "items": ["ron"],
        "lab_id": "LAB-1",
    }
    body.update(change)
    got, answer = await post(http, body)
    assert got == status, answer
    assert answer["field"] == field and words in answer["error"]


async def test_malformed_bodies_and_queries(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/tasks", data=b"{oops", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 422 and "not valid JSON" in (await r.json())["error"]
    async with http.post("/api/v1/tasks", data=b"x" * (2 * 1024 * 1024)) as r:
        assert r.status == 413
    async with http.get("/api/v1/tasks/T-1999-000000") as r:
        assert r.status == 404
    for query, field in (
        ({"outcome": "maybe"}, "outcome"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-01T00:00:00"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"colour": "red"}, "colour"),
    ):
        async with http.get("/api/v1/verdicts", params=query) as r:
            assert r.status == 422 and (await r.json())["field"] == field, query


async def test_cli_task_create_and_show(settings: Settings, http: aiohttp.ClientSession) -> None:
    env = {"SPOTCHECK_HTTP_PORT": str(settings.http_port), "SPOTCHECK_ADMIN_TOKEN": TOKEN}
    runner = CliRunner()
    made = await asyncio.to_thread(
        runner.invoke,
        cli,
        [
            "task",
            "create",
            "--enterprise",
            "E-9",
            "--product",
            "0# diesel",
            "--spec",
            "GB19147-2016:VI:0",
            "--lab",
            "LAB-2",
            "--items",
            "sulfur,cetane_number",
        ],
        env=env,
    )
    assert made.exit_code == 0, made.output
    task = json.loads(made.stdout)
    assert task["items"] == ["sulfur", "cetane_number"] and task["lab_id"] == "LAB-2"

    shown = await asyncio.to_thread(runner.invoke, cli, ["task", "show", task["task_id"]], env=env)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["task"]["task_id"] == task["task_id"]

    bad = await asyncio.to_thread(
        runner.invoke,
        cli,
        ["task", "create", "--enterprise", "E-9", "--product", "x", "--spec", "NOPE", "--lab", "L"],
        env=env,
    )
    assert bad.exit_code == 2 and "unknown spec" in bad.output and "field: spec" in bad.output


async def test_openapi_document_is_generated_and_valid(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    from openapi_spec_validator import validate

    base = f"http://{settings.http_host}:{settings.http_port}"
    async with aiohttp.ClientSession(base) as anonymous, anonymous.get("/api/v1/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    validate(doc)
    ingest = doc["paths"]["/api/v1/lab-results"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResultBatch")
    assert "202" in ingest["responses"] and "413" in ingest["responses"]
    assert doc["paths"]["/api/v1/tasks"]["post"]["responses"]["201"]
    schemas = doc["components"]["schemas"]
    assert {"value", "result_id", "amends"} <= set(schemas["LabResult"]["properties"])
    assert "lab_id" in schemas["TaskRequest"]["required"]
