"""The HTTP API (aiohttp): validates, publishes and answers; decides nothing itself."""

from __future__ import annotations

import hmac
import importlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from adapters import kafka, outbox
from adapters.api import openapi, schemas
from adapters.custody import TOKEN_KIND, CustodyStore
from adapters.labs import LabStore
from adapters.metrics import DEAD_LETTERS
from adapters.outbox import Outbox
from adapters.store import Store
from spotcheck.custody import IllegalTransition
from spotcheck.errors import Forbidden, InvalidInput, NotFound, SpotcheckError, TransientError
from spotcheck.events import (
    DeadLetter,
    Outcome,
    SamplingTask,
    describe_validation_error,
    payload_text,
    unstorable_text,
)
from spotcheck.labs import Lab
from spotcheck.settings import Settings
from spotcheck.tasks import TaskRequest, build_task
from spotcheck.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC
from spotcheck.topics import TASKS

log = structlog.get_logger(__name__)

HEALTHY_WITHIN_SECONDS = 30.0
MAX_BODY_BYTES = 1024 * 1024


@dataclass
class Api:
    """What the handlers need, built by the composition root and owned by it."""

    settings: Settings
    store: Store
    producer: AIOKafkaProducer
    admin_token: str
    components: tuple[str, ...]  # workers whose heartbeat /healthz requires
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    labs: LabStore | None = None  # the registry; verifies lab keys (one cache for the process)
    custody: CustodyStore | None = None  # verifies inspectors' tokens (one cache for the process)


API = web.AppKey("api", Api)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/public", "/public/results"}
)


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin (planners, operators), a lab with its API key, or an inspector
    with a token."""

    kind: str  # "admin" | "lab" | "inspector"
    lab_id: str | None = None
    inspector_id: str | None = None


PRINCIPAL = web.RequestKey("principal", Principal)
LAB_ROUTES: set[str] = set()  # names of the routes a lab key may call; admin may call all
INSPECTOR_ROUTES: set[str] = set()  # names of the routes an inspector's token may call


def principal_of(request: web.Request) -> Principal:
    found: Principal = request[PRINCIPAL]
    return found


async def _authenticate(request: web.Request, api: Api) -> Principal | web.Response:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return error(401, "missing bearer token (Authorization: Bearer …)")
    if hmac.compare_digest(token.encode(), api.admin_token.encode()):
        return Principal("admin")
    if token.startswith(TOKEN_KIND + "_"):
        inspector_id = await api.custody.verify_token(token) if api.custody is not None else None
        if inspector_id is None:
            return error(401, "token not accepted")
        return Principal("inspector", inspector_id=inspector_id)
    lab_id = await api.labs.verify_key(token) if api.labs is not None else None
    if lab_id is None:
        return error(401, "token not accepted")
    return Principal("lab", lab_id)


DEAD_LETTERED = web.RequestKey("dead_lettered", bool)


def source_of(request: web.Request) -> str:
    """Where a request's input came in, as a dead letter's source: the route's path pattern."""
    info = request.match_info.route.resource.get_info() if request.match_info.route.resource else {}
    return "http:" + str(info.get("formatter") or info.get("path") or request.path)


async def dead_letter_request(request: web.Request, key: str | None, reason: str) -> None:
    """Keep a refused request's body as a dead letter (once per request), naming its route and why."""
    if request.get(DEAD_LETTERED):
        return
    request[DEAD_LETTERED] = True
    api = request.app[API]
    try:
        raw: bytes | str = await request.read()  # kept byte for byte, NUL included
    except web.HTTPException:
        raw = "(body too large)"
    source = source_of(request)
    letter = DeadLetter.of(source, key, raw, reason, api.now(), origin=uuid.uuid4().hex)
    try:
        await Outbox(api.store).send(
            [(DEAD_LETTERS_TOPIC.full_name(api.settings), letter.key, letter.to_json())]
        )
    except SpotcheckError as exc:  # the caller still gets its answer; the log keeps the letter
        log.error(
            "dead letter not kept",
            source=source,
            reason=reason,
            error=str(exc),
            payload=payload_text(raw)[:2000],
        )
        return
    DEAD_LETTERS.labels(source).inc()


def _request_key(request: web.Request) -> str | None:
    values = list(request.match_info.values())
    return values[0] if values else None


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        found = await _authenticate(request, request.app[API])
        if isinstance(found, web.Response):
            return found
        route = request.match_info.route.name
        if found.kind == "lab" and route not in LAB_ROUTES:
            return error(403, "a lab key may not call this endpoint")
        if found.kind == "inspector" and route not in INSPECTOR_ROUTES:
            return error(403, "an inspector's token may not call this endpoint")
        request[PRINCIPAL] = found
    try:
        return await handler(request)
    except (ValidationError, InvalidInput) as exc:
        reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        if request.method != "GET":
            await dead_letter_request(request, _request_key(request), reason)
        if isinstance(exc, IllegalTransition):
            return web.json_response(
                {
                    "error": str(exc),
                    "field": exc.field,
                    "state": exc.current.value,
                    "allowed": sorted(s.value for s in exc.allowed),
                },
                status=409,
            )
        if isinstance(exc, InvalidInput):
            return error(422, str(exc), exc.field)
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        return error(422, reason, field)
    except Forbidden as exc:
        return error(403, str(exc))
    except NotFound as exc:
        return error(404, str(exc))
    except TransientError as exc:
        log.warning("dependency unavailable", path=request.path, error=str(exc))
        return error(503, str(exc))
    except SpotcheckError as exc:
        log.exception("request failed", path=request.path)
        return error(500, str(exc))


async def read_json(request: web.Request) -> Any:
    """The body as JSON; text PostgreSQL cannot store (NUL, a lone surrogate), in any string or
    name, is refused here with the field's path (422), before anything is published or stored."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    raw = await request.read()
    try:  # raw control characters in strings are let in only when a NUL byte is there: to name it
        body = json.loads(raw, strict=b"\x00" not in raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    found = unstorable_text(body)
    if found is not None:
        where, problem = found
        raise InvalidInput(f"{where or 'body'}: {problem}", field=where or "body")
    return body


async def create_task(request: web.Request) -> web.Response:
    api = request.app[API]
    body = TaskRequest.model_validate(await read_json(request))
    try:
        lab: Lab | None = await (api.labs or LabStore(api.store)).get(body.lab_id)
    except NotFound:
        lab = None
    number = await api.store.next_task_number()
    zone, days = ZoneInfo(api.settings.timezone), api.settings.sampling_days
    task = build_task(body, number, api.now(), zone, lab, sampling_days=days)
    async with api.store.transaction() as conn:  # stored (readable at once) and queued for the topic
        await api.store.save_tasks([task], conn)
        await outbox.add(conn, [(TASKS.full_name(api.settings), task.task_id, task.to_json())])
    log.info("task created", task_id=task.task_id, spec=task.spec, lab_id=task.lab_id)
    return web.json_response(
        task.to_dict(), status=201, headers={"Location": f"/api/v1/tasks/{task.task_id}"}
    )


async def get_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    view = await request.app[API].store.task_view(task_id)
    if view is None:
        raise NotFound(f"no task {task_id}")
    return web.json_response(view)


def _time_param(query: Any, name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 time, got {raw!r}", field=name) from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{name} must carry a UTC offset, e.g. {raw}+08:00", field=name)
    return moment


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number", field=name) from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}", field=name)
    return value


async def list_verdicts(request: web.Request) -> web.Response:
    q = request.query
    unknown = set(q) - {
        "product",
        "enterprise_id",
        "outcome",
        "spec",
        "since",
        "until",
        "all_versions",
        "limit",
        "offset",
    }
    if unknown:
        raise InvalidInput(f"unknown filter {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    outcome = q.get("outcome")
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        raise InvalidInput(f"outcome must be one of {', '.join(o.value for o in Outcome)}", field="outcome")
    verdicts = await request.app[API].store.list_verdicts(
        product=q.get("product"),
        enterprise_id=q.get("enterprise_id"),
        outcome=outcome,
        spec=q.get("spec"),
        since=_time_param(q, "since"),
        until=_time_param(q, "until"),
        all_versions=q.get("all_versions", "false").lower() in {"1", "true", "yes"},
        limit=_int_param(q, "limit", 100, 1, 1000),
        offset=_int_param(q, "offset", 0, 0, 10_000_000),
    )
    return web.json_response({"verdicts": verdicts, "count": len(verdicts)})


async def list_dead_letters(request: web.Request) -> web.Response:
    letters = await request.app[API].store.dead_letters(
        source=request.query.get("source"), limit=_int_param(request.query, "limit", 100, 1, 1000)
    )
    return web.json_response({"dead_letters": letters, "count": len(letters)})


async def pass_rates(request: web.Request) -> web.Response:
    rates = await request.app[API].store.pass_rates()
    return web.json_response({"pass_rates": rates})


async def _checks(api: Api, components: tuple[str, ...]) -> web.Response:
    checks: dict[str, str] = {}
    checks["broker"] = "up" if await kafka.broker_reachable(api.producer) else "down"
    live: set[str] = set()
    try:
        await api.store.ping()
        checks["database"] = "up"
        if components:
            live = await api.store.live_components(HEALTHY_WITHIN_SECONDS)
    except SpotcheckError:
        checks["database"] = "down"
    for component in components:
        checks[component] = "up" if component in live else "down"
    healthy = all(v == "up" for v in checks.values())
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )


async def health(request: web.Request) -> web.Response:
    """The whole platform: broker, database and every worker's heartbeat."""
    api = request.app[API]
    return await _checks(api, api.components)


async def ready(request: web.Request) -> web.Response:
    """This API process can serve: broker and database reachable (for load-balancer readiness)."""
    return await _checks(request.app[API], ())


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def create_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY_BYTES)
    app[API] = api
    app.router.add_post("/api/v1/tasks", create_task, name="tasks:create")
    app.router.add_get("/api/v1/tasks/{task_id}", get_task, name="tasks:get")
    app.router.add_get("/api/v1/verdicts", list_verdicts, name="verdicts:list")
    app.router.add_get("/api/v1/dead-letters", list_dead_letters, name="dead-letters:list")
    app.router.add_get("/api/v1/stats/pass-rates", pass_rates, name="stats:pass_rates")
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi.serve, name="openapi")
    for module in ROUTE_MODULES:
        importlib.import_module(module).register(app)
    return app


openapi.DOCS.update(
    {
        "tasks:create": openapi.RouteDoc("Create a sampling task", TaskRequest, SamplingTask, 201),
        "tasks:get": openapi.RouteDoc("A task with its results and verdicts", response=schemas.TaskView),
        "verdicts:list": openapi.RouteDoc(
            "Verdicts in force (or every version)",
            response=schemas.VerdictList,
            query=(
                ("product", "product name"),
                ("enterprise_id", "enterprise"),
                ("spec", "spec id"),
                ("outcome", "qualified, unqualified or incomplete"),
                ("since", "ISO time with offset"),
                ("until", "ISO time with offset"),
                ("all_versions", "true for superseded ones too"),
                ("limit", "1-1000, default 100"),
                ("offset", "for paging"),
            ),
        ),
        "dead-letters:list": openapi.RouteDoc(
            "Rejected input with the reason",
            response=schemas.DeadLetterList,
            query=(("source", "topic or endpoint"), ("limit", "1-1000")),
        ),
        "stats:pass_rates": openapi.RouteDoc("Live pass rates per product", response=schemas.PassRates),
    }
)


ROUTE_MODULES: tuple[str, ...] = (
    "adapters.api.labs",
    "adapters.api.centers",
    "adapters.api.registry",
    "adapters.api.custody",
    "adapters.api.draws",
    "adapters.api.alerts",
    "adapters.api.cases",
)  # modules with `register(app)`
