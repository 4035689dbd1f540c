"""HTTP routes: enforcement cases (list, full history, objection, notice received) and the public,
read-only list of final results (JSON and a page). Inputs are checked here against the stored case
and published for the stream processor, which decides."""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from adapters import outbox
from adapters.api import openapi
from adapters.api.app import API, _int_param, audit_in, audit_note, dead_letter_request, read_json
from adapters.cases import CaseStore
from spotcheck.case_model import CaseEvent, CaseInput, CaseState, InputKind
from spotcheck.clock import Clock, clock_for
from spotcheck.errors import InvalidInput
from spotcheck.topics import CASE_INPUTS

CASES = web.AppKey("cases", CaseStore)
CLOCK: web.AppKey[Clock] = web.AppKey("case_clock")
FILTERS = frozenset({"state", "enterprise_id", "limit"})


class ObjectionRequest(BaseModel):
    """The enterprise's objection (复检 request), as the bureau records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: str = Field(min_length=1, max_length=200, description="who objects for the enterprise")
    reason: str | None = Field(default=None, max_length=500)


class NoticeReceived(BaseModel):
    """When the enterprise received the notice of the unqualified result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    received_at: AwareDatetime
    by: str | None = Field(default=None, max_length=200)


class CaseView(BaseModel):
    case_id: str
    enterprise_id: str
    task_id: str
    product: str
    spec: str
    state: CaseState
    last_seq: int
    opened_at: datetime
    updated_at: datetime
    failing_items: list[str]
    objection_due: datetime | None
    final_at: datetime | None
    final_outcome: str | None
    publish_by: datetime | None
    referred: bool


class CaseList(BaseModel):
    cases: list[CaseView]
    count: int


class CaseHistory(CaseView):
    events: list[CaseEvent]


class Accepted(BaseModel):
    case_id: str
    input_id: str
    status: str = "accepted"


class PublicResult(BaseModel):
    task_number: str
    enterprise: str
    product: str
    spec: str
    outcome: str
    failing_items: list[str]
    decided_on: str
    final_on: str
    publish_by: str | None


class PublicResults(BaseModel):
    results: list[PublicResult]
    count: int


async def list_cases(request: web.Request) -> web.Response:
    q = request.query
    unknown = sorted(set(q) - FILTERS)
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}", field=unknown[0])
    state = q.get("state")
    if state is not None and state not in {s.value for s in CaseState}:
        raise InvalidInput(f"state must be one of {', '.join(s.value for s in CaseState)}", field="state")
    found = await request.app[CASES].find(
        state=state, enterprise_id=q.get("enterprise_id") or None, limit=_int_param(q, "limit", 100, 1, 1000)
    )
    return web.json_response({"cases": found, "count": len(found)})


async def get_case(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CASES].get(request.match_info["case_id"]))


async def _conflict(request: web.Request, case: dict[str, Any], why: str) -> web.Response:
    reason = f"case {case['case_id']} is {case['state']}: {why}"
    await dead_letter_request(request, case["case_id"], reason)
    return web.json_response({"error": reason, "field": "case_id", "state": case["state"]}, status=409)


def _as_before(case: dict[str, Any]) -> dict[str, Any]:
    """The case as the audit log keeps it before an input (without its history of events)."""
    return {k: v for k, v in case.items() if k != "events"}


async def _publish(request: web.Request, given: CaseInput) -> web.Response:
    """The input queued for the stream processor (which decides) with its audit entry, in one
    transaction; `after` in the audit log is the input, the case changes when it is processed."""
    api = request.app[API]
    topic = CASE_INPUTS.full_name(api.settings)
    assert given.case_id is not None
    async with api.store.transaction() as conn:
        await outbox.add(conn, [(topic, given.enterprise_id, given.to_json())])
        await audit_in(conn, request, 202, after=json.loads(given.to_json()))
    return web.json_response(
        Accepted(case_id=given.case_id, input_id=given.input_id).model_dump(), status=202
    )


async def object_to_result(request: web.Request) -> web.Response:
    """An objection within the window: the stream orders a re-test of the retained sample elsewhere."""
    body = ObjectionRequest.model_validate(await read_json(request))
    case = await request.app[CASES].get(request.match_info["case_id"])
    audit_note(request, before=_as_before(case))
    now = request.app[CLOCK]()
    if case["state"] != CaseState.OBJECTION_WINDOW.value:
        return await _conflict(request, case, "an objection is taken only within the objection window")
    if case["objection_due"] is not None and now > datetime.fromisoformat(case["objection_due"]):
        return await _conflict(request, case, f"the objection window closed at {case['objection_due']}")
    given = CaseInput(
        input_id=f"objection:{case['case_id']}",  # one objection per case: a resend is the same input
        kind=InputKind.OBJECTION,
        enterprise_id=case["enterprise_id"],
        case_id=case["case_id"],
        at=now,
        by=body.by,
        reason=body.reason,
    )
    return await _publish(request, given)


async def notice_received(request: web.Request) -> web.Response:
    """The day the enterprise received the notice: the objection window runs from it."""
    body = NoticeReceived.model_validate(await read_json(request))
    case = await request.app[CASES].get(request.match_info["case_id"])
    audit_note(request, before=_as_before(case))
    now = request.app[CLOCK]()
    if case["state"] != CaseState.OBJECTION_WINDOW.value:
        return await _conflict(request, case, "the notice's receipt is recorded within the objection window")
    if body.received_at > now or body.received_at < datetime.fromisoformat(case["opened_at"]).replace(
        hour=0, minute=0, second=0, microsecond=0
    ):
        raise InvalidInput("received_at lies between the case's opening and now", field="received_at")
    given = CaseInput(
        input_id=f"notice-received:{case['case_id']}",
        kind=InputKind.NOTICE_RECEIVED,
        enterprise_id=case["enterprise_id"],
        case_id=case["case_id"],
        at=body.received_at,
        by=body.by,
    )
    return await _publish(request, given)


async def _public(request: web.Request) -> list[dict[str, Any]]:
    q = request.query
    return await request.app[CASES].public_results(
        request.app[CLOCK](), product=q.get("product") or None, limit=_int_param(q, "limit", 200, 1, 1000)
    )


async def public_results(request: web.Request) -> web.Response:
    found = await _public(request)
    return web.json_response({"results": found, "count": len(found)})


PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>产品质量监督抽查结果 · Spot-check results</title>
<style>
body{{font-family:system-ui,sans-serif;margin:0;padding:1rem;color:#222;background:#fafafa}}
h1{{font-size:1.25rem}}
.r{{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem .8rem;margin:.5rem 0}}
.unqualified{{border-left:5px solid #c0392b}} .qualified{{border-left:5px solid #27ae60}}
.m{{color:#666;font-size:.85rem}} b{{font-weight:600}}
</style></head><body>
<h1>产品质量监督抽查结果 · Supervisory spot-check results</h1>
<p class="m">Final results only (none still open to objection). {count} result(s).</p>
{rows}
</body></html>"""


def _card(r: dict[str, Any]) -> str:
    e = html.escape
    failing = f"<div>Failing items: {e(', '.join(r['failing_items']))}</div>" if r["failing_items"] else ""
    return (
        f'<div class="r {e(r["outcome"])}"><div><b>{e(r["enterprise"])}</b> · {e(r["product"])}</div>'
        f"<div>{e(r['outcome'])} · {e(r['spec'])}</div>{failing}"
        f'<div class="m">Task {e(r["task_number"])} · decided {e(r["decided_on"])} · final {e(r["final_on"])}'
        "</div></div>"
    )


async def public_page(request: web.Request) -> web.Response:
    found = await _public(request)
    page = PAGE.format(count=len(found), rows="\n".join(_card(r) for r in found) or "<p>No results yet.</p>")
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def register(app: web.Application) -> None:
    """Adds this module's routes to `app`."""
    app[CASES] = CaseStore(app[API].store)
    app[CLOCK] = clock_for(app[API].settings.clock_file)
    app.router.add_get("/api/v1/cases", list_cases, name="cases:list")
    app.router.add_get("/api/v1/cases/{case_id}", get_case, name="cases:get")
    app.router.add_post("/api/v1/cases/{case_id}/objection", object_to_result, name="cases:objection")
    app.router.add_post("/api/v1/cases/{case_id}/notice-received", notice_received, name="cases:notice")
    app.router.add_get("/public/results", public_results, name="public:results")
    app.router.add_get("/public", public_page, name="public:page")


openapi.DOCS.update(
    {
        "cases:list": openapi.RouteDoc(
            "Enforcement cases, newest first",
            response=CaseList,
            query=(
                openapi.Param("state", "a case state", openapi.one_of(*(s.value for s in CaseState))),
                ("enterprise_id", "one enterprise"),
                openapi.LIMIT,
            ),
        ),
        "cases:get": openapi.RouteDoc("A case with its full history (every event)", response=CaseHistory),
        "cases:objection": openapi.RouteDoc(
            "Record the enterprise's objection within the window (a re-test follows); 409 outside it",
            ObjectionRequest,
            Accepted,
            202,
            errors=(409,),
        ),
        "cases:notice": openapi.RouteDoc(
            "Record when the enterprise received the notice (the objection window runs from it)",
            NoticeReceived,
            Accepted,
            202,
            errors=(409,),
        ),
        "public:results": openapi.RouteDoc(
            "Public, read-only: final results as the law allows them to be shown (no token)",
            response=PublicResults,
            query=(
                ("product", "one product"),
                openapi.Param("limit", "1-1000, default 200", openapi.integer(1, 1000, 200)),
            ),
            public=True,
        ),
    }
)
