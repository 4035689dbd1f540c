"""The HTTP API (aiohttp): validates, publishes and answers; decides nothing itself."""

from __future__ import annotations

import asyncio
import hmac
import importlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from adapters import kafka, outbox
from adapters.api import openapi, schemas
from adapters.audit import AuditLog, Entry
from adapters.custody import TOKEN_KIND, CustodyStore
from adapters.labs import LabStore
from adapters.metrics import DEAD_LETTERS
from adapters.outbox import Outbox
from adapters.store import Store
from adapters.store import translate as translate_db_error
from spotcheck.custody import IllegalTransition
from spotcheck.errors import Forbidden, InvalidInput, NotFound, SpotcheckError, StoreError, TransientError
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

MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = 5  # what a 503 asks the caller to wait before trying again
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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
    audit: AuditLog | None = None  # the audit log of every write


API = web.AppKey("api", Api)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/public", "/public/results"}
)
REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def error(
    status: int,
    message: str,
    field: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """Every error the API answers: JSON `{"error": …, "field": …}`; a 503 says when to retry."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    sent = dict(headers or {})
    if status == 503:
        sent.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return web.json_response(body, status=status, headers=sent)


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


# --- the audit log of writes --------------------------------------------------------------------


@dataclass
class AuditNote:
    """What a write handler tells the audit log beyond who and what: the target, the thing before
    and after, other detail; `written` once the handler has appended the entry in its transaction."""

    target_id: str | None = None
    before: Any = None
    after: Any = None
    detail: Any = None
    written: bool = False


AUDIT_NOTE = web.RequestKey("audit_note", AuditNote)
NAMED_ACTOR_HEADERS = ("X-Spotcheck-Actor", "X-Spotcheck-Changed-By")


def audit_note(request: web.Request, **fields: Any) -> AuditNote:
    """The request's note for the audit log, with `fields` set (target_id, before, after, detail)."""
    note = request.get(AUDIT_NOTE)
    if note is None:
        note = request[AUDIT_NOTE] = AuditNote()
    for name, value in fields.items():
        setattr(note, name, value)
    return note


def _audit_entry(request: web.Request, status: int) -> Entry:
    who = request.get(PRINCIPAL)
    note = request.get(AUDIT_NOTE) or AuditNote()
    named = None
    if who is not None and who.kind == "admin":
        named = next((request.headers[h][:200] for h in NAMED_ACTOR_HEADERS if request.headers.get(h)), None)
    return Entry(
        request_id=request.get(REQUEST_ID) or uuid.uuid4().hex,
        actor_kind=who.kind if who is not None else "anonymous",
        actor_id=(who.lab_id or who.inspector_id) if who is not None else None,
        named_actor=named,
        method=request.method,
        route=request.match_info.route.name or source_of(request),
        path=request.path,
        status=status,
        target_id=note.target_id or _request_key(request),
        before=note.before,
        after=note.after,
        detail=note.detail,
        remote=request.remote,
        client=request.headers.get("User-Agent"),
    )


def _audit_log(api: Api) -> AuditLog:
    if api.audit is None:
        api.audit = AuditLog(api.store)
    return api.audit


async def audit_in(conn: asyncpg.Connection, request: web.Request, status: int, **fields: Any) -> None:
    """Append the request's audit entry in the handler's transaction (`status` is what the handler
    is about to answer); `fields` as for `audit_note`."""
    note = audit_note(request, **fields)
    await _audit_log(request.app[API]).add(_audit_entry(request, status), conn)
    note.written = True


async def _audit_after(request: web.Request, status: int, raised: bool) -> None:
    """Every write to a route of the API is in the audit log once answered, refused ones too."""
    if request.method not in WRITES or request.match_info.http_exception is not None:
        return
    note = request.get(AUDIT_NOTE)
    if note is not None and note.written and not raised:
        return
    if note is not None and raised:  # the handler's transaction, if any, did not commit
        note.after = None
    entry = _audit_entry(request, status)
    try:
        await _audit_log(request.app[API]).add(entry)
    except Exception as exc:  # noqa: BLE001 - the answer stands; the log line keeps the entry
        log.error("audit entry not kept", error=str(exc), **entry.to_log())


# --- errors and authentication ------------------------------------------------------------------


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID_SHAPE.fullmatch(given) else uuid.uuid4().hex


def _as_project_error(exc: BaseException) -> BaseException:
    """A driver's error as the project's own (the adapters translate most; this catches the rest)."""
    if isinstance(exc, KafkaError):
        return kafka.translate(exc)
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError):
        return translate_db_error(exc)
    return exc


def _unavailable(request: web.Request, exc: BaseException) -> web.Response:
    what = (
        "the database"
        if str(exc).startswith("database")
        else ("the broker" if str(exc).startswith("broker") else "a service the platform needs")
    )
    log.warning(
        "dependency unavailable",
        path=request.path,
        method=request.method,
        request_id=request[REQUEST_ID],
        error=str(exc),
    )
    return error(
        503,
        f"temporarily unavailable: {what} did not answer; try again in {RETRY_AFTER_SECONDS} s",
        request_id=request[REQUEST_ID],
    )


def _bug(request: web.Request, exc: BaseException) -> web.Response:
    log.error(
        "request failed",
        path=request.path,
        method=request.method,
        request_id=request[REQUEST_ID],
        exc_info=exc,
    )
    return error(
        500,
        f"internal error; the platform's log has it under request id {request[REQUEST_ID]}",
        request_id=request[REQUEST_ID],
    )


def _http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no such route, method not allowed, body too large) as JSON."""
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        message = f"method {exc.method} is not allowed here (allowed: {headers['Allow']})"
    elif isinstance(exc, web.HTTPNotFound):
        message = "no such route"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = f"body too large: at most {MAX_BODY_BYTES} bytes"
    else:
        message = exc.reason
    return error(exc.status, message, "body" if exc.status == 413 else None, headers=headers)


async def _answer(request: web.Request, handler: Handler) -> tuple[web.StreamResponse, bool]:
    """The handler's answer, or the error it raised as a JSON answer; and whether it raised."""
    try:
        unmatched = request.match_info.http_exception
        if unmatched is not None:
            return _http_error(unmatched), False
        if request.path not in OPEN_PATHS:
            found = await _authenticate(request, request.app[API])
            if isinstance(found, web.Response):
                return found, False
            request[PRINCIPAL] = found
            route = request.match_info.route.name
            if found.kind == "lab" and route not in LAB_ROUTES:
                return error(403, "a lab key may not call this endpoint"), False
            if found.kind == "inspector" and route not in INSPECTOR_ROUTES:
                return error(403, "an inspector's token may not call this endpoint"), False
        return await handler(request), False
    except asyncio.CancelledError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413 and request.method in WRITES:
            await dead_letter_request(request, _request_key(request), "body too large")
        return _http_error(exc), True
    except (ValidationError, InvalidInput) as exc:
        reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        if request.method != "GET":
            await dead_letter_request(request, _request_key(request), reason)
        if isinstance(exc, IllegalTransition):
            answer = {
                "error": str(exc),
                "field": exc.field,
                "state": exc.current.value,
                "allowed": sorted(s.value for s in exc.allowed),
            }
            return web.json_response(answer, status=409), True
        if isinstance(exc, InvalidInput):
            return error(422, str(exc), exc.field), True
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        return error(422, reason, field), True
    except Forbidden as exc:
        return error(403, str(exc)), True
    except NotFound as exc:
        return error(404, str(exc)), True
    except Exception as exc:  # noqa: BLE001 - nothing leaves the API but a JSON answer
        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
        if isinstance(cause, asyncpg.DataError):  # e.g. a NUL character: the input's fault
            return error(422, f"the platform cannot store this input: {str(cause).splitlines()[0]}"), True
        seen = _as_project_error(exc)
        if isinstance(seen, TransientError):
            return _unavailable(request, seen), True
        return _bug(request, exc), True


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, every failure as a JSON answer (a transient one as 503 with Retry-After, a
    bug as 500 with the request id that the log names), and the audit log of writes."""
    request[REQUEST_ID] = _request_id(request)
    response, raised = await _answer(request, handler)
    await _audit_after(request, response.status, raised)
    if not response.prepared:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


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
        await audit_in(conn, request, 201, target_id=task.task_id, after=task.to_dict())
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


def _bool_param(query: Any, name: str) -> bool | None:
    """A yes-or-no filter: `true` or `false` (any case); None when not given."""
    raw = query.get(name)
    if raw is None:
        return None
    if raw.lower() not in {"true", "false"}:
        raise InvalidInput(f"{name} must be true or false, got {raw[:40]!r}", field=name)
    return bool(raw.lower() == "true")


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
        all_versions=bool(_bool_param(q, "all_versions")),
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


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def create_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY_BYTES)
    _audit_log(api)
    app[API] = api
    app.router.add_post("/api/v1/tasks", create_task, name="tasks:create")
    app.router.add_get("/api/v1/tasks/{task_id}", get_task, name="tasks:get")
    app.router.add_get("/api/v1/verdicts", list_verdicts, name="verdicts:list")
    app.router.add_get("/api/v1/dead-letters", list_dead_letters, name="dead-letters:list")
    app.router.add_get("/api/v1/stats/pass-rates", pass_rates, name="stats:pass_rates")
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
                openapi.Param(
                    "outcome",
                    "qualified, unqualified or incomplete",
                    openapi.one_of(*(o.value for o in Outcome)),
                ),
                openapi.Param("since", "ISO time with offset", openapi.TIME),
                openapi.Param("until", "ISO time with offset", openapi.TIME),
                openapi.Param("all_versions", "true for superseded ones too", openapi.BOOLEAN),
                openapi.LIMIT,
                openapi.Param("offset", "for paging", openapi.integer(0, 10_000_000, 0)),
            ),
        ),
        "dead-letters:list": openapi.RouteDoc(
            "Rejected input with the reason",
            response=schemas.DeadLetterList,
            query=(("source", "topic or endpoint"), openapi.LIMIT),
        ),
        "stats:pass_rates": openapi.RouteDoc("Live pass rates per product", response=schemas.PassRates),
    }
)


ROUTE_MODULES: tuple[str, ...] = (
    "adapters.api.health",
    "adapters.api.labs",
    "adapters.api.centers",
    "adapters.api.registry",
    "adapters.api.custody",
    "adapters.api.draws",
    "adapters.api.alerts",
    "adapters.api.cases",
    "adapters.api.audit",
)  # modules with `register(app)`
