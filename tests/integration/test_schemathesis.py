"""Schemathesis against the served OpenAPI document of a real platform, with the admin token: no 5xx,
and no answer (status, content type, headers, body) that the document does not describe."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from adapters.labs import LabStore
from adapters.store import Store
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, create_task, result

pytestmark = pytest.mark.integration

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "missing_required_header",
    "ignored_auth",
)
EXCLUDED = (
    "centers:create",  # a subscribed center is pushed to at the URL it names: a fuzzed one could be anywhere
    "health",  # 503 here by design: no stream processor runs in this test (/readyz is tested)
)
EXAMPLES = 6  # per operation: a few hundred requests in all, about a minute
SEED = 20261124  # the same cases every run (change it to explore others)


async def _things(http: aiohttp.ClientSession, store: Store) -> dict[str, list[str]]:
    """One of each kind of thing the paths name, so that some requests find something (the rest
    of the time the fuzzer's own ids are used)."""
    task = await create_task(http)
    async with http.post(
        "/api/v1/lab-results", json=result(task, "ron", "93.1"), headers={"X-Spotcheck-Lab": "LAB-1"}
    ) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
    center = {"center_id": "QTC-FUZZ", "name": "fuzz", "url": "http://127.0.0.1:9/hook"}
    async with http.post("/api/v1/centers", json=center) as resp:
        assert resp.status == 201, await resp.text()
    records = {
        "enterprises": [
            {
                "enterprise_id": "91370500MA3C000003",
                "name": "Station 1",
                "district": "Kenli District",
                "kind": "filling-station",
                "products": ["motor gasoline"],
            }
        ],
        "inspectors": [
            {
                "inspector_id": "INS-1",
                "name": "Inspector 1",
                "unit": "Kenli AMR",
                "district": "Kenli District",
            }
        ],
        "products": [{"product": "motor gasoline", "spec_ids": ["GB17930-2016:VIB:92"]}],
    }
    for kind, batch in records.items():
        async with http.post(f"/api/v1/registry/{kind}", json=batch) as resp:
            assert resp.status == 200, await resp.text()
    key = (await LabStore(store).create_key("LAB-2"))["prefix"]
    return {
        "task_id": [task["task_id"]],
        "result_id": [answer["outcomes"][0]["result_id"]],
        "lab_id": ["LAB-1", "LAB-2"],
        "prefix": [key],
        "center_id": ["QTC-FUZZ"],
        "enterprise_id": ["91370500MA3C000003"],
        "inspector_id": ["INS-1"],
        "product": ["motor gasoline"],
        "record_id": ["91370500MA3C000003", "INS-1", "motor gasoline"],
    }


def _config(things: dict[str, list[str]]) -> str:
    """schemathesis.toml: each path parameter is one of `things` half of the time."""
    lines = []
    for name, values in things.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in things]
    return "\n".join(lines) + "\n"


async def test_the_api_keeps_to_its_openapi_document(
    settings: Settings, http: aiohttp.ClientSession, store: Store, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(await _things(http, store)))
    st = Path(sys.executable).with_name("st")
    base = f"http://{settings.http_host}:{settings.http_port}"
    args = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{base}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        *(a for op in EXCLUDED for a in ("--exclude-operation-id", op)),
    ]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    text = out.decode(errors="replace")
    took = time.monotonic() - started
    print(text[-4000:], f"\nschemathesis took {took:.0f} s")
    assert proc.returncode == 0, text[-20000:]
