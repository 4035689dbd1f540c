"""HTTP routes for the directory: batch upserts and removals (each a registry-change/1 event),
searches of enterprises, inspectors and products, and the directory as it stood at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, RootModel

from adapters.api import openapi
from adapters.api.app import API, _int_param, _time_param, audit_in, audit_note, error, read_json
from adapters.metrics import DEAD_LETTERS
from adapters.outbox import Outbox
from adapters.registry import TABLES, Publish, RegistryStore, publisher
from spotcheck.errors import InvalidInput
from spotcheck.events import DeadLetter
from spotcheck.registry import (
    ID_FIELDS,
    PLURALS,
    Enterprise,
    EnterpriseKind,
    Inspector,
    Product,
    RecordKind,
    RegistryChange,
    kind_of,
    parse_record,
    record_id,
)
from spotcheck.specs import load_catalog
from spotcheck.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC

CHANGED_BY = "X-Spotcheck-Changed-By"  # optional: what the admin is doing (e.g. the imported file)


@dataclass(frozen=True)
class Registry:
    store: RegistryStore
    publish: Publish


REGISTRY_KEY = web.AppKey("registry", Registry)


# --- documented bodies and answers -------------------------------------------------------------


class RecordOutcome(BaseModel):
    index: int = Field(description="position of the record in the list sent")
    id: str | None = None
    status: str = Field(description="created, updated, unchanged or rejected")
    version: int | None = None
    error: str | None = None
    field: str | None = None


class UpsertAnswer(BaseModel):
    outcomes: list[RecordOutcome]
    created: int
    updated: int
    unchanged: int
    rejected: int
    error: str | None = Field(default=None, description="the first rejected record (status 422)")
    field: str | None = Field(default=None, description="<index>.<field> of the first rejected record")


class RecordBatch(RootModel[list[Enterprise | Inspector | Product]]):
    """A JSON list of enterprise, inspector or product records (the kind named in the path)."""


class EnterpriseList(BaseModel):
    enterprises: list[dict[str, Any]]
    count: int
    total: int


class InspectorList(BaseModel):
    inspectors: list[dict[str, Any]]
    count: int
    total: int


class ProductList(BaseModel):
    products: list[dict[str, Any]]
    count: int
    total: int


class RecordView(BaseModel):
    record: dict[str, Any]
    version: int
    updated_at: str
    removed_at: str | None
    history: list[dict[str, Any]] = Field(description="every version, oldest first; record null on removal")


class AsOf(BaseModel):
    at: str
    enterprises: int
    inspectors: int
    products: int
    labs: int = Field(description="labs are counted as they are now (they are not versioned here)")
    digest: str = Field(description="SHA-256 of the snapshot a draw at that time would use")


# --- writes -------------------------------------------------------------------------------------


def _changed_by(request: web.Request) -> str:
    what = request.headers.get(CHANGED_BY, "").strip()
    return f"admin ({what[:150]})" if what else "admin"


def _audited(request: web.Request, kind: RecordKind, publish: Publish, status: int) -> Publish:
    """`publish`, and the request's audit entry with each changed record before and after, in the
    transaction that writes the changes (before they are written: the rows still hold the old)."""
    table = TABLES[kind]

    async def publish_and_audit(conn: Any, changes: list[RegistryChange]) -> None:
        await publish(conn, changes)
        rows = await conn.fetch(
            f"SELECT {table.id_column} AS id, record::text AS record, removed_at FROM {table.name}"
            f" WHERE {table.id_column} = ANY($1)",
            [c.record_id for c in changes],
        )
        was = {r["id"]: json.loads(r["record"]) for r in rows if r["removed_at"] is None}
        await audit_in(
            conn,
            request,
            status,
            before={c.record_id: was.get(c.record_id) for c in changes},
            after={c.record_id: c.record for c in changes},
            detail={"kind": kind, "versions": {c.record_id: c.version for c in changes}},
        )

    return publish_and_audit


def _guess_id(kind: RecordKind, raw: Any) -> str | None:
    value = raw.get(ID_FIELDS[kind]) if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


async def upsert_records(request: web.Request) -> web.Response:
    """A list of records of one kind: each is created, updated or unchanged, or rejected (with a
    dead letter); the good ones are applied even when some are rejected (then the status is 422)."""
    api = request.app[API]
    plural = request.match_info["kind"]
    kind = kind_of(plural)
    body = await read_json(request)
    if not isinstance(body, list):
        raise InvalidInput(f"send a JSON list of {plural} records", field="body")
    if not body:
        raise InvalidInput("the list is empty", field="body")
    limit = api.settings.registry_max_batch
    if len(body) > limit:
        return error(413, f"a batch holds at most {limit} records, this one {len(body)}", "body")
    spec_products = {spec.id: spec.product for spec in load_catalog().specs()}
    now = api.now()
    source = f"http:/api/v1/registry/{plural}"
    good: list[tuple[int, Any]] = []
    answers: dict[int, RecordOutcome] = {}
    letters: list[tuple[str | None, bytes]] = []
    for index, raw in enumerate(body):
        try:
            good.append((index, parse_record(kind, raw, spec_products=spec_products)))
        except InvalidInput as exc:
            rid = _guess_id(kind, raw)
            answers[index] = RecordOutcome(
                index=index, id=rid, status="rejected", error=str(exc), field=exc.field
            )
            letter = DeadLetter.of(
                source, rid, json.dumps(raw, ensure_ascii=False), str(exc), now, origin=f"item {index}"
            )
            letters.append((letter.key, letter.to_json()))
    if letters:
        topic = DEAD_LETTERS_TOPIC.full_name(api.settings)
        await Outbox(api.store).send([(topic, key, value) for key, value in letters])
        DEAD_LETTERS.labels(source).inc(len(letters))
    registry = request.app[REGISTRY_KEY]
    audit_note(request, target_id=plural)
    publish = _audited(request, kind, registry.publish, 422 if letters else 200)
    done = await registry.store.upsert(
        kind, [record for _, record in good], _changed_by(request), now, publish
    )
    for (index, record), (status, change) in zip(good, done, strict=True):
        answers[index] = RecordOutcome(
            index=index, id=record_id(record), status=status, version=change.version if change else None
        )
    outcomes = [answers[i] for i in range(len(body))]
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("created", "updated", "unchanged")}
    answer = UpsertAnswer(outcomes=outcomes, rejected=len(letters), **counts)
    first = next((o for o in outcomes if o.status == "rejected"), None)
    if first is not None:
        answer = answer.model_copy(
            update={"error": f"record {first.index}: {first.error}", "field": f"{first.index}.{first.field}"}
        )
    return web.json_response(answer.model_dump(exclude_none=True), status=422 if first else 200)


async def remove_record(request: web.Request) -> web.Response:
    api = request.app[API]
    kind = kind_of(request.match_info["kind"])
    reason = request.query.get("reason")
    if reason is not None and not 1 <= len(reason.strip()) <= 500:
        raise InvalidInput("reason must be 1 to 500 characters", field="reason")
    registry = request.app[REGISTRY_KEY]
    audit_note(request, target_id=request.match_info["record_id"])
    change = await registry.store.remove(
        kind,
        request.match_info["record_id"],
        _changed_by(request),
        api.now(),
        _audited(request, kind, registry.publish, 200),
        reason,
    )
    return web.json_response(change.to_dict())


# --- reads --------------------------------------------------------------------------------------

FILTERS: dict[str, tuple[str, ...]] = {
    "enterprise": ("q", "district", "kind", "product", "supplied_by"),
    "inspector": ("q", "district", "unit"),
    "product": ("q",),
}


async def _search(request: web.Request, kind: RecordKind, plural: str) -> web.Response:
    q = request.query
    unknown = sorted(set(q) - {*FILTERS[kind], "limit", "offset"})
    if unknown:
        raise InvalidInput(f"unknown filter {unknown[0]!r}", field=unknown[0])
    filters = {name: q[name] for name in FILTERS[kind] if q.get(name)}
    if "kind" in filters and filters["kind"] not in {k.value for k in EnterpriseKind}:
        raise InvalidInput(f"kind must be one of {', '.join(k.value for k in EnterpriseKind)}", field="kind")
    found, total = await request.app[REGISTRY_KEY].store.search(
        kind,
        filters,
        limit=_int_param(q, "limit", 100, 1, 1000),
        offset=_int_param(q, "offset", 0, 0, 10_000_000),
    )
    return web.json_response({plural: found, "count": len(found), "total": total})


async def list_enterprises(request: web.Request) -> web.Response:
    return await _search(request, "enterprise", "enterprises")


async def list_inspectors(request: web.Request) -> web.Response:
    return await _search(request, "inspector", "inspectors")


async def list_products(request: web.Request) -> web.Response:
    return await _search(request, "product", "products")


async def get_enterprise(request: web.Request) -> web.Response:
    view = await request.app[REGISTRY_KEY].store.view("enterprise", request.match_info["enterprise_id"])
    return web.json_response(view)


async def get_inspector(request: web.Request) -> web.Response:
    view = await request.app[REGISTRY_KEY].store.view("inspector", request.match_info["inspector_id"])
    return web.json_response(view)


async def get_product(request: web.Request) -> web.Response:
    view = await request.app[REGISTRY_KEY].store.view("product", request.match_info["product"])
    return web.json_response(view)


async def as_of(request: web.Request) -> web.Response:
    """Who was in the directory at `at`: counts and the digest of the snapshot."""
    at = _time_param(request.query, "at")
    if at is None:
        raise InvalidInput("give at=<ISO time with offset>, e.g. 2026-11-01T00:00:00+08:00", field="at")
    store = request.app[REGISTRY_KEY].store
    snapshot = await store.snapshot(at)
    answer = AsOf(
        at=at.isoformat(),
        enterprises=len(snapshot.enterprises),
        inspectors=len(snapshot.inspectors),
        products=await store.count_at("product", at),
        labs=len(snapshot.labs),
        digest=snapshot.digest(),
    )
    return web.json_response(answer.model_dump())


def register(app: web.Application) -> None:
    """Adds this module's routes to `app`."""
    api = app[API]
    app[REGISTRY_KEY] = Registry(RegistryStore(api.store), publisher(api.settings))
    r = app.router
    kinds = "{kind:" + "|".join(PLURALS) + "}"  # only these: /registry/as-of is another route
    r.add_post(f"/api/v1/registry/{kinds}", upsert_records, name="registry:upsert")
    r.add_delete(f"/api/v1/registry/{kinds}/{{record_id}}", remove_record, name="registry:remove")
    r.add_get("/api/v1/registry/as-of", as_of, name="registry:as_of")
    r.add_get("/api/v1/enterprises", list_enterprises, name="enterprises:list")
    r.add_get("/api/v1/enterprises/{enterprise_id}", get_enterprise, name="enterprises:get")
    r.add_get("/api/v1/inspectors", list_inspectors, name="inspectors:list")
    r.add_get("/api/v1/inspectors/{inspector_id}", get_inspector, name="inspectors:get")
    r.add_get("/api/v1/products", list_products, name="products:list")
    r.add_get("/api/v1/products/{product}", get_product, name="products:get")


PAGING = (openapi.LIMIT, openapi.Param("offset", "for paging", openapi.integer(0, 10_000_000, 0)))
KINDS = (("kind", openapi.one_of(*PLURALS)),)
openapi.DOCS.update(
    {
        "registry:upsert": openapi.RouteDoc(
            "Add or change directory records: a JSON list of enterprises, inspectors or products "
            "(kind in the path). Each is answered created, updated, unchanged or rejected (with a dead "
            "letter); good records are applied even when some are rejected, and then the status is 422.",
            RecordBatch,
            UpsertAnswer,
            path=KINDS,
            headers=(openapi.Param(CHANGED_BY, "what the admin is doing (kept in the history)"),),
        ),
        "registry:remove": openapi.RouteDoc(
            "Remove a record from the directory (its history stays)",
            response=RegistryChange,
            query=(("reason", "why, kept in the history (1-500 characters)"),),
            path=KINDS,
            headers=(openapi.Param(CHANGED_BY, "what the admin is doing (kept in the history)"),),
        ),
        "registry:as_of": openapi.RouteDoc(
            "The directory as it stood at a time: counts and the snapshot digest",
            response=AsOf,
            query=(openapi.Param("at", "ISO time with offset", openapi.TIME, required=True),),
        ),
        "enterprises:list": openapi.RouteDoc(
            "Enterprises in the directory",
            response=EnterpriseList,
            query=(
                ("q", "a substring of the name or the unified social credit code"),
                ("district", "district, exactly"),
                openapi.Param(
                    "kind", "producer, depot, filling-station or seller", openapi.one_of(*EnterpriseKind)
                ),
                ("product", "makes or sells this product"),
                ("supplied_by", "supplied by this enterprise"),
                *PAGING,
            ),
        ),
        "enterprises:get": openapi.RouteDoc("An enterprise with every version of it", response=RecordView),
        "inspectors:list": openapi.RouteDoc(
            "Inspectors in the directory",
            response=InspectorList,
            query=(
                ("q", "a substring of the name or id"),
                ("district", "district"),
                ("unit", "a substring"),
                *PAGING,
            ),
        ),
        "inspectors:get": openapi.RouteDoc("An inspector with every version", response=RecordView),
        "products:list": openapi.RouteDoc(
            "Products in the directory with their spec ids",
            response=ProductList,
            query=(("q", "a substring of the name or display name"), *PAGING),
        ),
        "products:get": openapi.RouteDoc("A product with every version", response=RecordView),
    }
)
