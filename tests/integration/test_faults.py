"""Faults answered properly: a database outage is a JSON 503 with Retry-After on every route (the
authentication of keys and tokens too) and /healthz says the database is down; a bug is a JSON 500
with a request id the log names; aiohttp's own refusals (413, 404, 405) are JSON like the rest."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import structlog
import structlog.testing
from aiohttp import web
from pydantic import SecretStr

from adapters import kafka
from adapters.api.app import Api, create_app
from adapters.embedded import free_port
from adapters.labs import LabStore
from adapters.runtime import WORKER_COMPONENTS, workers
from adapters.store import Store
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, CuttableProxy, create_task, proxied_url, result

pytestmark = pytest.mark.integration


@pytest.fixture
async def outage(settings: Settings, store: Store) -> AsyncIterator[tuple[CuttableProxy, Settings]]:
    """The API alone, running against the test's database through a proxy the test can cut."""
    assert settings.database_url is not None
    real = urlsplit(settings.database_url.get_secret_value())
    proxy = CuttableProxy(real.hostname or "127.0.0.1", real.port or 5432)
    await proxy.start()
    proxied = settings.model_copy(
        update={"database_url": SecretStr(proxied_url(settings.database_url.get_secret_value(), proxy.port))}
    )
    async with workers(proxied, ("api",), TOKEN):
        yield proxy, proxied
    with contextlib.suppress(AssertionError):
        await proxy.cut()


def _session(settings: Settings, token: str = TOKEN) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=f"http://{settings.http_host}:{settings.http_port}",
        headers={"Authorization": f"Bearer {token}"},
    )


async def _call(session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    async with session.request(method, path, **kw) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json(), resp.headers


def _unavailable(status: int, body: Any, headers: Any) -> None:
    assert status == 503, body
    assert int(headers["Retry-After"]) > 0
    assert "database" in body["error"] and body["request_id"]


async def test_a_database_outage_is_a_json_503_with_retry_after_then_202_again(
    outage: tuple[CuttableProxy, Settings], store: Store
) -> None:
    proxy, settings = outage
    labs = LabStore(store)
    cached_key = (await labs.create_key("LAB-1"))["key"]
    fresh_key = (await labs.create_key("LAB-1"))["key"]  # never verified before the outage
    async with _session(settings) as admin, _session(settings, cached_key) as lab:
        task = await create_task(admin)
        first = result(task, "ron", "93.1")
        status, body, _ = await _call(lab, "POST", "/api/v1/lab-results", json=first)
        assert status == 202, body

        await proxy.cut()
        second = result(task, "sulfur", "8.2")
        _unavailable(*await _call(lab, "POST", "/api/v1/lab-results", json=second))
        async with _session(settings, fresh_key) as unknown:  # the key lookup itself needs the database
            _unavailable(*await _call(unknown, "POST", "/api/v1/lab-results", json=second))
        async with _session(settings, "scins_0123abcd_whatever") as inspector:
            _unavailable(*await _call(inspector, "GET", f"/api/v1/tasks/{task['task_id']}/trail"))
        _unavailable(*await _call(admin, "GET", f"/api/v1/tasks/{task['task_id']}"))
        _unavailable(*await _call(admin, "GET", "/api/v1/verdicts"))
        _unavailable(
            *await _call(
                admin, "POST", "/api/v1/labs", json={"lab_id": "LAB-9", "name": "x", "scope": [{"spec": "*"}]}
            )
        )
        _unavailable(*await _call(admin, "GET", "/api/v1/labs/LAB-1/stats"))
        _unavailable(*await _call(admin, "GET", "/api/v1/alerts"))
        _unavailable(*await _call(admin, "GET", "/api/v1/draws"))
        _unavailable(*await _call(admin, "GET", "/api/v1/enterprises"))
        _unavailable(*await _call(admin, "GET", "/api/v1/cases"))
        _unavailable(*await _call(admin, "GET", "/api/v1/centers"))
        for probe in ("/healthz", "/readyz"):
            status, body, headers = await _call(admin, "GET", probe)
            assert status == 503, body
            assert body["checks"]["database"]["state"] == "down" and body["checks"]["database"]["reason"]
            assert body["checks"]["broker"]["state"] == "up"
            assert int(headers["Retry-After"]) > 0

        await proxy.restore()
        status, body, _ = await _call(lab, "POST", "/api/v1/lab-results", json=second)
        assert status == 202, body
        async with _session(settings, fresh_key) as known:
            status, body, _ = await _call(
                known, "POST", "/api/v1/lab-results", json=result(task, "benzene", "0.4")
            )
            assert status == 202, body
        status, body, _ = await _call(admin, "GET", "/readyz")
        assert status == 200 and body["checks"]["database"] == {"state": "up"}, body


@pytest.fixture
async def bare_api(settings: Settings, store: Store) -> AsyncIterator[tuple[str, web.Application]]:
    """The API's app on a free port with one more route, whose handler has a bug."""
    producer = kafka.producer(settings)
    await producer.start()

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"missing": {}["key"]})

    app = create_app(Api(settings, store, producer, TOKEN, WORKER_COMPONENTS))
    app.router.add_get("/api/v1/broken", broken, name="broken")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()
        await producer.stop()


async def test_a_bug_is_a_json_500_with_the_request_id_the_log_names(
    bare_api: tuple[str, web.Application],
) -> None:
    base, _ = bare_api
    request_id = f"test-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        with structlog.testing.capture_logs() as logged:
            status, body, headers = await _call(
                admin, "GET", "/api/v1/broken", headers={"X-Request-Id": request_id}
            )
    assert status == 500, body
    assert body["request_id"] == request_id == headers["X-Request-Id"]
    assert request_id in body["error"] and "key" not in body["error"]
    failed = [e for e in logged if e.get("request_id") == request_id]
    assert failed and failed[0]["event"] == "request failed" and failed[0]["log_level"] == "error"
    assert isinstance(failed[0]["exc_info"], KeyError)


async def test_aiohttps_own_refusals_are_json(bare_api: tuple[str, web.Application]) -> None:
    base, _ = bare_api
    big = b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is met while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        status, body, _ = await _call(admin, "POST", "/api/v1/tasks", data=big)
        assert status == 413 and body["field"] == "body", body
        status, body, _ = await _call(admin, "POST", "/api/v1/labs", data=chunks())
        assert status == 413 and "too large" in body["error"], body
        status, body, _ = await _call(admin, "GET", "/api/v1/no-such-thing")
        assert status == 404 and body["error"], body
        status, body, headers = await _call(admin, "DELETE", "/api/v1/verdicts")
        assert status == 405 and "GET" in headers["Allow"], body
    async with aiohttp.ClientSession(base) as anonymous:
        status, body, _ = await _call(anonymous, "GET", "/nowhere")
        assert status == 404, body


async def test_what_the_fuzzer_found_is_refused_as_input(bare_api: tuple[str, web.Application]) -> None:
    base, _ = bare_api
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        nul = {"lab_id": "LAB-N", "name": "nul", "scope": [{"product": "motor\u0000diesel"}]}
        status, body, _ = await _call(admin, "POST", "/api/v1/labs", json=nul)
        assert status == 422 and "cannot be stored" in body["error"], body
        status, body, headers = await _call(admin, "POST", "/api/v1/registry/as-of")
        assert status == 405 and headers["Allow"] == "GET, HEAD", body
        status, body, _ = await _call(
            admin,
            "PUT",
            "/api/v1/labs/LAB-1",
            json={"name": "x", "scope": [{"spec": "*"}], "daily_capacity": False},
        )
        assert status == 422 and body["field"] == "daily_capacity", body
        status, body, _ = await _call(admin, "GET", "/api/v1/verdicts", params={"all_versions": "1.5e16"})
        assert status == 422 and body["field"] == "all_versions", body
        status, body, _ = await _call(admin, "GET", "/api/v1/audit", params={"route": "labs:create"})
    assert status == 200 and body["entries"][0]["status"] == 422, body
