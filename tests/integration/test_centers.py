"""Push to quality-testing centers on the real broker and database, to a real local HTTP receiver:
signatures, filters, retries after 500s and timeouts, dead letters, redelivery, isolation."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from openapi_spec_validator import validate
from typer.testing import CliRunner

from adapters.api import app as api_app
from adapters.api.centers import CenterCreated, CenterList, DeliveryList, DeliveryView, register
from adapters.centers import CenterStore, NewDelivery
from adapters.embedded import free_port
from adapters.store import Store
from consumers.centers import CenterPush, Dispatcher
from producers.relay import Relay
from spotcheck.centers import (
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CenterRequest,
    DeliveryAttempt,
    delivery_id,
    verify,
)
from spotcheck.cli.centers import centers_app
from spotcheck.events import (
    Comparison,
    DeadLetter,
    ItemJudgement,
    LimitView,
    Outcome,
    SamplingTask,
    Verdict,
)
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, eventually, read_topic, result, send

pytestmark = pytest.mark.integration

GASOLINE = "GB17930-2016:VIB:92"
DIESEL = "GB19147-2016:VI:0"
FAST = {  # retries in tens of milliseconds, timeouts in a fraction of a second
    "push_max_attempts": 3,
    "push_backoff_initial_seconds": 0.05,
    "push_backoff_max_seconds": 0.2,
    "push_timeout_seconds": 0.5,
    "push_poll_seconds": 0.1,
}


# --- a quality-testing center's receiver --------------------------------------------------------


@dataclass
class Got:
    """One request a center received, checked the way a center should check it."""

    headers: dict[str, str]
    body: dict[str, Any]
    verified: bool
    status: int | None = None  # None while the receiver is still holding the request

    @property
    def event_id(self) -> str:
        data = self.body["data"]
        return str(data.get("verdict_id") or data.get("result_id"))


class Receiver:
    """A real aiohttp server; each center gets /hook/<center_id> and behaves as scripted:
    "ok" (200), "500", or "hang" (answer nothing until after the client's timeout)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.secrets: dict[str, str] = {}
        self.script: dict[str, list[str]] = defaultdict(list)
        self.default: dict[str, str] = defaultdict(lambda: "ok")
        self.got: dict[str, list[Got]] = defaultdict(list)
        self.release = asyncio.Event()
        self.delay = 0.0  # seconds before every answer
        self._runner: web.AppRunner | None = None

    def url(self, center_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{center_id}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{center_id}", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        center_id = request.match_info["center_id"]
        raw = await request.read()
        verified = verify(
            self.secrets[center_id],
            request.headers.get(TIMESTAMP_HEADER, ""),
            raw,
            request.headers.get(SIGNATURE_HEADER, ""),
            tolerance_seconds=300,
        )
        got = Got(dict(request.headers), json.loads(raw), verified)
        self.got[center_id].append(got)
        if not verified:
            got.status = 401
            return web.json_response({"error": "bad signature"}, status=401)
        await asyncio.sleep(self.delay)
        queue = self.script[center_id]
        action = queue.pop(0) if queue else self.default[center_id]
        if action == "hang":
            try:
                await asyncio.wait_for(self.release.wait(), 10)
            except TimeoutError:
                pass
            got.status = -1  # the sender gave up long ago
            return web.Response(status=200)
        got.status = 500 if action == "500" else 200
        if got.status == 500:
            return web.Response(status=500, text="center overloaded")
        return web.json_response({"received": got.body["delivery_id"]})

    def accepted(self, center_id: str) -> list[Got]:
        return [g for g in self.got[center_id] if g.status == 200]

    def in_flight(self, center_id: str) -> int:
        return sum(1 for g in self.got[center_id] if g.status is None)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def centers_base() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def centers_http(
    settings: Settings, store: Store, producer: AIOKafkaProducer, centers_base: str
) -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP API with the centers' routes, served on a free port."""
    app = api_app.create_app(api_app.Api(settings, store, producer, TOKEN, ()))
    if "adapters.api.centers" not in api_app.ROUTE_MODULES:
        register(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(centers_base.rpartition(":")[2])).start()
    async with aiohttp.ClientSession(
        base_url=centers_base, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session
    await runner.cleanup()


StartPush = Callable[..., Awaitable[CenterPush]]


@pytest.fixture
async def start_push(
    settings: Settings, store: Store, producer: AIOKafkaProducer
) -> AsyncIterator[StartPush]:
    started: list[CenterPush] = []
    relay = Relay(settings, store, producer)  # publishes the attempts and dead letters they store
    await relay.start()

    async def start(**overrides: Any) -> CenterPush:
        push = CenterPush(
            settings.model_copy(update={**FAST, **overrides}), store, producer, refresh_seconds=0.2
        )
        await push.start()
        started.append(push)
        await asyncio.wait_for(push.ready.wait(), 30)
        return push

    yield start
    for push in started:
        await asyncio.wait_for(push.stop(), 30)
    await relay.stop()


# --- helpers --------------------------------------------------------------------------------------


async def add_center(
    http: aiohttp.ClientSession, receiver: Receiver, center_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"center_id": center_id, "name": f"Center {center_id}", "url": receiver.url(center_id), **fields}
    async with http.post("/api/v1/centers", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    receiver.secrets[center_id] = answer["secret"]
    return answer


async def api(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


def verdict(task_id: str, version: int = 1, outcome: str = "unqualified", spec: str = GASOLINE) -> Verdict:
    now = datetime.now(UTC)
    sulfur = ItemJudgement(
        item="sulfur",
        value=Decimal("10.4"),
        unit="mg/kg",
        limit=LimitView(max="10", text="≤ 10"),
        comparison=Comparison.WHOLE,
        compared_value=Decimal("10.4"),
        judgement="fail" if outcome == "unqualified" else "pass",
    )
    return Verdict(
        verdict_id=f"{task_id}/v{version}",
        task_id=task_id,
        sample_id=f"{task_id}-A",
        version=version,
        supersedes=f"{task_id}/v{version - 1}" if version > 1 else None,
        outcome=Outcome(outcome),
        spec=spec,
        enterprise_id="91370500MA3C000001",
        product="92# motor gasoline",
        lab_id="LAB-1",
        items=(sulfur,),
        result_ids=(f"R-{task_id}",),
        last_result_at=now,
        decided_at=now,
    )


async def publish(lab: AIOKafkaProducer, settings: Settings, *verdicts: Verdict) -> None:
    for v in verdicts:
        await lab.send_and_wait(f"{settings.topic_namespace}.verdicts", v.to_json(), key=v.task_id.encode())


async def knows(push: CenterPush, *center_ids: str, not_: tuple[str, ...] = ()) -> bool:
    return all(push.knows(c) for c in center_ids) and not any(push.knows(c) for c in not_)


def attempts_of(records: list[Any], center_id: str) -> list[DeliveryAttempt]:
    attempts = [(r.key.decode(), DeliveryAttempt.from_json(r.value)) for r in records]
    return [a for key, a in attempts if key == center_id and a.center_id == center_id]


# --- tests ----------------------------------------------------------------------------------------


async def test_signed_pushes_follow_the_filters_and_are_never_queued_twice(
    settings: Settings,
    store: Store,
    centers_http: aiohttp.ClientSession,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    push = await start_push()
    await add_center(
        centers_http,
        receiver,
        "QTC-GAS",
        filters={"products": ["motor gasoline"], "outcomes": ["unqualified"]},
    )
    await add_center(centers_http, receiver, "QTC-DIESEL", filters={"specs": ["GB19147-2016:"]})
    await add_center(centers_http, receiver, "QTC-OFF")
    status, disabled = await api(centers_http, "POST", "/api/v1/centers/QTC-OFF/disable")
    assert status == 200 and disabled["enabled"] is False
    await eventually(lambda: knows(push, "QTC-GAS", "QTC-DIESEL", not_=("QTC-OFF",)), 10)

    failed_gas = verdict("T-2026-000001")
    passed_gas = verdict("T-2026-000002", outcome="qualified")
    diesel = verdict("T-2026-000003", spec=DIESEL)
    await publish(lab, settings, failed_gas, passed_gas, diesel)

    await eventually(lambda: _at_least(receiver.accepted("QTC-GAS"), 1), 15)
    await eventually(lambda: _at_least(receiver.accepted("QTC-DIESEL"), 1), 15)
    got = receiver.accepted("QTC-GAS")[0]
    key = delivery_id("QTC-GAS", "verdict", failed_gas.verdict_id)
    assert got.verified
    assert got.headers[IDEMPOTENCY_HEADER] == key and got.body["delivery_id"] == key
    assert got.headers[EVENT_HEADER] == "verdict" and got.body["event"] == "verdict"
    assert got.headers["Content-Type"] == "application/json"
    assert got.body["data"] == failed_gas.to_dict()
    assert abs(int(got.headers[TIMESTAMP_HEADER]) - time.time()) < 60
    assert receiver.accepted("QTC-DIESEL")[0].body["data"]["verdict_id"] == diesel.verdict_id

    # The same verdict consumed again (a re-delivery by the broker), then the sample's next
    # version on the same partition: once that arrives, the duplicate was seen and ignored.
    await publish(lab, settings, failed_gas, verdict("T-2026-000001", version=2))
    await eventually(lambda: _at_least(receiver.accepted("QTC-GAS"), 2), 15)
    assert [g.event_id for g in receiver.accepted("QTC-GAS")] == ["T-2026-000001/v1", "T-2026-000001/v2"]
    assert all(g.verified for c in receiver.got for g in receiver.got[c])
    assert receiver.got["QTC-OFF"] == []

    # a center has its answer a moment before the worker has recorded it
    listed = await eventually(lambda: _recorded(centers_http, "QTC-GAS", 2), 10)
    CenterList.model_validate(listed)  # the answer is what the OpenAPI document says
    counts = {c["center_id"]: c["deliveries"] for c in listed["centers"]}
    assert counts["QTC-GAS"] == {"pending": 0, "delivered": 2, "failed": 0}
    assert counts["QTC-DIESEL"]["delivered"] == 1 and sum(counts["QTC-OFF"].values()) == 0
    assert all("secret" not in c for c in listed["centers"])
    status, shown = await api(centers_http, "GET", "/api/v1/centers/QTC-GAS")
    assert shown["filters"]["products"] == ["motor gasoline"] and "secret" not in shown
    status, delivered = await api(centers_http, "GET", "/api/v1/centers/QTC-GAS/deliveries?state=delivered")
    DeliveryList.model_validate(delivered)
    assert [d["event_id"] for d in delivered["deliveries"]] == ["T-2026-000001/v2", "T-2026-000001/v1"]

    records = await read_topic(settings, "deliveries", lambda rs: len(attempts_of(rs, "QTC-GAS")) >= 2)
    logged = attempts_of(records, "QTC-GAS")
    assert [(a.event_id, a.outcome, a.status) for a in logged] == [
        ("T-2026-000001/v1", "delivered", 200),
        ("T-2026-000001/v2", "delivered", 200),
    ]


async def test_retries_after_500s_and_a_timeout_then_delivers_in_task_order(
    settings: Settings,
    centers_http: aiohttp.ClientSession,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    push = await start_push(push_max_attempts=5)
    await add_center(centers_http, receiver, "QTC-FLAKY")
    await eventually(lambda: knows(push, "QTC-FLAKY"), 10)
    receiver.script["QTC-FLAKY"] = ["500", "500", "hang"]

    first, second = verdict("T-2026-000010"), verdict("T-2026-000010", version=2)
    await publish(lab, settings, first, second)
    await eventually(lambda: _at_least(receiver.accepted("QTC-FLAKY"), 2), 20)

    # v2 waited for v1 through all its retries: the center saw the task's verdicts in order
    seen = [(g.event_id, g.status) for g in receiver.got["QTC-FLAKY"]]
    assert seen == [
        (first.verdict_id, 500),
        (first.verdict_id, 500),
        (first.verdict_id, None),  # still held by the receiver: the push gave up waiting
        (first.verdict_id, 200),
        (second.verdict_id, 200),
    ]
    assert len({g.headers[IDEMPOTENCY_HEADER] for g in receiver.got["QTC-FLAKY"][:4]}) == 1
    assert all(g.verified for g in receiver.got["QTC-FLAKY"])

    key = delivery_id("QTC-FLAKY", "verdict", first.verdict_id)
    status, view = await api(centers_http, "GET", f"/api/v1/centers/QTC-FLAKY/deliveries/{key}")
    assert status == 200 and view["state"] == "delivered" and view["attempts"] == 4
    DeliveryView.model_validate(view)
    log = [(a["attempt"], a["outcome"], a["status"]) for a in view["attempt_log"]]
    assert log == [(1, "retrying", 500), (2, "retrying", 500), (3, "retrying", None), (4, "delivered", 200)]
    assert "HTTP 500: center overloaded" == view["attempt_log"][0]["error"]
    assert "no answer within 0.5s" == view["attempt_log"][2]["error"]
    assert view["data"]["verdict_id"] == first.verdict_id

    records = await read_topic(settings, "deliveries", lambda rs: len(attempts_of(rs, "QTC-FLAKY")) >= 5)
    assert [a.outcome for a in attempts_of(records, "QTC-FLAKY")] == ["retrying"] * 3 + ["delivered"] * 2


async def test_a_dead_center_ends_in_dead_letters_delays_no_one_and_is_redelivered(
    settings: Settings,
    centers_http: aiohttp.ClientSession,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    timeout = 1.5
    push = await start_push(push_max_attempts=2, push_timeout_seconds=timeout)
    await add_center(centers_http, receiver, "QTC-DEAD")
    await add_center(centers_http, receiver, "QTC-OK")
    await eventually(lambda: knows(push, "QTC-DEAD", "QTC-OK"), 10)
    receiver.default["QTC-DEAD"] = "hang"

    verdicts = [verdict(f"T-2026-00002{n}") for n in range(5)]
    sent_at = time.monotonic()
    await publish(lab, settings, *verdicts)
    await eventually(lambda: _at_least(receiver.accepted("QTC-OK"), 5), 15)
    took = time.monotonic() - sent_at
    # the healthy center had everything before the dead one's first attempts even timed out
    assert took < timeout, took
    assert receiver.accepted("QTC-DEAD") == [] and receiver.in_flight("QTC-DEAD") >= 1

    letters_seen = await read_topic(
        settings,
        "dead-letters",
        lambda rs: sum(1 for r in rs if DeadLetter.from_json(r.value).source == "push:QTC-DEAD") >= 5,
    )
    letters = [DeadLetter.from_json(r.value) for r in letters_seen]
    failed_ids = {delivery_id("QTC-DEAD", "verdict", v.verdict_id) for v in verdicts}
    assert {d.key for d in letters if d.source == "push:QTC-DEAD"} == failed_ids
    assert all("after 2 attempts in " in d.reason for d in letters)
    assert all(d.reason.endswith(": no answer within 1.5s") for d in letters)
    assert json.loads(letters[0].payload)["event"] == "verdict"

    status, failed = await eventually(lambda: _failed(centers_http, "QTC-DEAD", 5), 10)
    assert {d["delivery_id"] for d in failed} == failed_ids

    # the center recovers: one delivery redelivered by id, then all that are left
    receiver.default["QTC-DEAD"] = "ok"
    one = delivery_id("QTC-DEAD", "verdict", verdicts[0].verdict_id)
    status, answer = await api(
        centers_http, "POST", "/api/v1/centers/QTC-DEAD/redeliver", {"delivery_ids": [one]}
    )
    assert status == 200 and answer == {"redelivered": [one], "count": 1}
    await eventually(lambda: _at_least(receiver.accepted("QTC-DEAD"), 1), 10)
    assert receiver.accepted("QTC-DEAD")[0].headers[IDEMPOTENCY_HEADER] == one
    await eventually(lambda: _in_state(centers_http, "QTC-DEAD", one, "delivered"), 10)

    status, bad = await api(
        centers_http, "POST", "/api/v1/centers/QTC-DEAD/redeliver", {"delivery_ids": [one]}
    )
    assert status == 422 and bad["field"] == "delivery_ids" and "delivered" in bad["error"]
    status, bad = await api(
        centers_http, "POST", "/api/v1/centers/QTC-DEAD/redeliver", {"delivery_ids": ["nope"]}
    )
    assert status == 404
    status, bad = await api(centers_http, "POST", "/api/v1/centers/QTC-DEAD/redeliver", {})
    assert status == 422 and bad["field"] == "delivery_ids"

    status, answer = await api(
        centers_http, "POST", "/api/v1/centers/QTC-DEAD/redeliver", {"all_failed": True}
    )
    assert status == 200 and answer["count"] == 4
    await eventually(lambda: _at_least(receiver.accepted("QTC-DEAD"), 5), 10)
    assert {g.headers[IDEMPOTENCY_HEADER] for g in receiver.accepted("QTC-DEAD")} == failed_ids

    status, view = await api(centers_http, "GET", f"/api/v1/centers/QTC-DEAD/deliveries/{one}")
    assert view["state"] == "delivered" and view["round"] == 2
    assert [(a["round"], a["outcome"]) for a in view["attempt_log"]] == [
        (1, "retrying"),
        (1, "failed"),
        (2, "delivered"),
    ]
    assert len(receiver.accepted("QTC-OK")) == 5  # nothing sent twice to the healthy center


async def test_raw_results_reach_only_the_centers_that_ask_for_them(
    settings: Settings,
    store: Store,
    centers_http: aiohttp.ClientSession,
    receiver: Receiver,
    lab: AIOKafkaProducer,
    start_push: StartPush,
) -> None:
    now = datetime.now(UTC)
    gasoline_task, diesel_task = (
        SamplingTask(
            task_id=task_id,
            sample_id=f"{task_id}-A",
            enterprise_id="E-1",
            product="fuel",
            spec=spec,
            items=("sulfur",),
            lab_id="LAB-1",
            created_at=now,
        )
        for task_id, spec in (("T-2026-000031", GASOLINE), ("T-2026-000032", DIESEL))
    )
    await store.save_tasks([gasoline_task, diesel_task])
    push = await start_push()
    await add_center(
        centers_http, receiver, "QTC-RAW", include_results=True, filters={"specs": ["GB17930-2016:"]}
    )
    await add_center(centers_http, receiver, "QTC-VERDICTS")
    await eventually(lambda: knows(push, "QTC-RAW", "QTC-VERDICTS"), 10)

    task = gasoline_task.to_dict()
    results = [result(task, "sulfur", "8.3"), result(task, "sulfur", "8.4")]
    await send(lab, settings, *results, result(diesel_task.to_dict(), "sulfur", "7.0"))
    await eventually(lambda: _at_least(receiver.accepted("QTC-RAW"), 2), 15)

    got = receiver.accepted("QTC-RAW")
    assert [g.body["data"]["result_id"] for g in got] == [r["result_id"] for r in results]
    assert all(g.headers[EVENT_HEADER] == "lab-result" and g.body["event"] == "lab-result" for g in got)
    assert got[0].body["data"]["value"] == "8.3" and got[0].verified
    status, queued = await api(centers_http, "GET", "/api/v1/centers/QTC-VERDICTS/deliveries")
    assert queued["count"] == 0 and receiver.got["QTC-VERDICTS"] == []
    status, raw = await api(centers_http, "GET", "/api/v1/centers/QTC-RAW/deliveries")
    assert raw["count"] == 2  # the diesel result did not pass the spec filter


async def test_two_workers_never_send_the_same_delivery_and_keep_task_order(
    settings: Settings, store: Store, producer: AIOKafkaProducer, receiver: Receiver
) -> None:
    centers = CenterStore(store)
    await centers.add(
        CenterRequest(center_id="QTC-BUSY", name="Busy", url=receiver.url("QTC-BUSY")), "s" * 32
    )
    receiver.secrets["QTC-BUSY"] = "s" * 32
    receiver.delay = 0.02
    versions = [verdict(f"T-2026-00004{t}", version=n) for n in range(1, 5) for t in range(8)]
    await centers.enqueue(
        [
            NewDelivery(
                delivery_id("QTC-BUSY", "verdict", v.verdict_id),
                "QTC-BUSY",
                v.task_id,
                "verdict",
                v.verdict_id,
                v.to_json().decode(),
            )
            for v in versions
        ]
    )
    fast = settings.model_copy(update=FAST)
    workers = [Dispatcher(fast, centers, producer), Dispatcher(fast, centers, producer)]
    for worker in workers:
        await worker.start()
    try:
        await eventually(lambda: _at_least(receiver.accepted("QTC-BUSY"), len(versions)), 20)
        await asyncio.sleep(0.3)  # anything sent twice would arrive by now
    finally:
        for worker in workers:
            await worker.stop()
    got = receiver.got["QTC-BUSY"]
    assert len(got) == len(versions) and all(g.status == 200 and g.verified for g in got)
    assert len({g.headers[IDEMPOTENCY_HEADER] for g in got}) == len(versions)
    for t in range(8):
        task_id = f"T-2026-00004{t}"
        assert [g.event_id for g in got if g.body["data"]["task_id"] == task_id] == [
            f"{task_id}/v{n}" for n in range(1, 5)
        ]


async def test_bad_requests_name_the_field_and_the_cli_drives_the_api(
    centers_http: aiohttp.ClientSession, centers_base: str
) -> None:
    good = {"center_id": "QTC-1", "name": "Jinan center", "url": "https://qtc.example.cn/hook"}
    for change, field in (
        ({"url": "ftp://qtc.example.cn/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"filters": {"products": ["petrol"]}}, "filters.products"),
        ({"filters": {"specs": ["GB0000:"]}}, "filters.specs"),
        ({"filters": {"outcomes": ["maybe"]}}, "filters.outcomes.0"),
        ({"secret": "short"}, "secret"),
        ({"center_id": "bad id"}, "center_id"),
        ({"colour": "red"}, "colour"),
    ):
        status, answer = await api(centers_http, "POST", "/api/v1/centers", {**good, **change})
        assert status == 422 and answer["field"] == field, (change, answer)
    status, made = await api(centers_http, "POST", "/api/v1/centers", {**good, "secret": "s" * 20})
    assert status == 201 and made["secret"] == "s" * 20 and made["enabled"] is True
    CenterCreated.model_validate(made)
    status, again = await api(centers_http, "POST", "/api/v1/centers", good)
    assert status == 422 and again["field"] == "center_id" and "exists" in again["error"]
    for path in (
        "/api/v1/centers/NOPE",
        "/api/v1/centers/NOPE/deliveries",
        "/api/v1/centers/QTC-1/deliveries/x",
    ):
        status, _ = await api(centers_http, "GET", path)
        assert status == 404, path
    status, answer = await api(centers_http, "GET", "/api/v1/centers/QTC-1/deliveries?state=lost")
    assert status == 422 and answer["field"] == "state"
    async with aiohttp.ClientSession(centers_base) as anonymous:
        async with anonymous.get("/api/v1/centers") as resp:
            assert resp.status == 401
        async with anonymous.get("/api/v1/openapi.json") as resp:
            doc = await resp.json()
    validate(doc)
    create = doc["paths"]["/api/v1/centers"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CenterRequest")
    assert "201" in create["responses"] and "/api/v1/centers/{center_id}/redeliver" in doc["paths"]

    common = ["--api", centers_base, "--token", TOKEN]
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(centers_app, [*args, *common])

    added = await asyncio.to_thread(
        cli,
        "add",
        "QTC-2",
        "--name",
        "Qingdao center",
        "--url",
        "http://127.0.0.1:9/hook",
        "--product",
        "motor diesel",
        "--spec",
        "GB19147-2016:",
        "--outcome",
        "unqualified",
        "--results",
    )
    assert added.exit_code == 0, added.output
    center = json.loads(added.stdout)
    assert center["secret"].startswith("whsec_") and center["include_results"] is True
    assert center["filters"] == {
        "products": ["motor diesel"],
        "specs": ["GB19147-2016:"],
        "districts": [],
        "outcomes": ["unqualified"],
    }
    listed = await asyncio.to_thread(cli, "list")
    assert [c["center_id"] for c in json.loads(listed.stdout)["centers"]] == ["QTC-1", "QTC-2"]
    shown = await asyncio.to_thread(cli, "show", "QTC-2")
    assert json.loads(shown.stdout)["name"] == "Qingdao center"
    off = await asyncio.to_thread(cli, "disable", "QTC-2")
    assert off.exit_code == 0 and json.loads(off.stdout)["enabled"] is False
    none = await asyncio.to_thread(cli, "deliveries", "QTC-2", "--state", "failed")
    assert json.loads(none.stdout) == {"deliveries": [], "count": 0}
    nothing = await asyncio.to_thread(cli, "redeliver", "QTC-2", "--all-failed")
    assert json.loads(nothing.stdout) == {"redelivered": [], "count": 0}
    neither = await asyncio.to_thread(cli, "redeliver", "QTC-2")
    assert neither.exit_code == 2
    bad = await asyncio.to_thread(cli, "add", "QTC-3", "--name", "x", "--url", "gopher://x/")
    assert bad.exit_code == 2 and "(field: url)" in " ".join(bad.output.split())


async def _at_least(items: list[Got], n: int) -> list[Got] | None:
    return items if len(items) >= n else None


async def _failed(http: aiohttp.ClientSession, center_id: str, n: int) -> tuple[int, list[Any]] | None:
    status, answer = await api(http, "GET", f"/api/v1/centers/{center_id}/deliveries?state=failed")
    return (status, answer["deliveries"]) if answer["count"] >= n else None


async def _recorded(http: aiohttp.ClientSession, center_id: str, delivered: int) -> dict[str, Any] | None:
    """The list of centers once `center_id` has `delivered` deliveries recorded."""
    _, listed = await api(http, "GET", "/api/v1/centers")
    counts = {c["center_id"]: c["deliveries"] for c in listed["centers"]}
    return listed if counts[center_id]["delivered"] >= delivered else None


async def _in_state(http: aiohttp.ClientSession, center_id: str, delivery: str, state: str) -> bool:
    _, view = await api(http, "GET", f"/api/v1/centers/{center_id}/deliveries/{delivery}")
    return bool(view["state"] == state)
