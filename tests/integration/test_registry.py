"""The directory on the real platform: imports with bad rows, re-runs, versions and history,
snapshots as of a time, removal, searches, change events and dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from adapters.registry import RegistryStore, load_demo_registry
from adapters.store import Store
from spotcheck.cli import app as cli
from spotcheck.errors import NotFound
from spotcheck.registry import RegistryChange, uscc_check_digit
from spotcheck.settings import Settings
from tests.integration.helpers import TOKEN, dead_letters, eventually

pytestmark = pytest.mark.integration


def code(n: int, division: str = "370502") -> str:
    first17 = f"91{division}MA{n:07d}"
    return first17 + uscc_check_digit(first17)


REFINERY, DEPOT, STATION, SHOP = code(1), code(2), code(3, "370503"), code(4)
BAD_CHECK = code(5)[:17] + ("0" if code(5)[17] != "0" else "1")

ENTERPRISES_CSV = f"""enterprise_id,name,district,kind,products,licence_status,supplied_by
{REFINERY},Dongying Lihua Petrochemical Co. Ltd.,Dongying District,producer,motor gasoline;motor diesel,valid,
{DEPOT},Dongying Binhai Oil Depot,Dongying District,depot,motor gasoline;motor diesel,,{REFINERY}
{BAD_CHECK},Broken code filling station,Hekou District,filling-station,motor gasoline,valid,{DEPOT}
{STATION},Hekou Gudao Filling Station,Hekou District,filling-station,motor gasoline;motor diesel,valid,{DEPOT}
{code(6)},Wrong kind Ltd.,Dongying District,refinery,motor gasoline,valid,
{SHOP},"Dongying Jinyu Farm Inputs Store",Dongying District,seller,compound fertilizer,valid,
{code(7)},No licence status shop,Dongying District,seller,tyres,lapsed,
"""


async def cli_run(settings: Settings, *args: str, code_: int = 0) -> Any:
    env = {"SPOTCHECK_HTTP_PORT": str(settings.http_port), "SPOTCHECK_ADMIN_TOKEN": TOKEN}
    done = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    assert done.exit_code == code_, done.output
    return done


async def get(http: aiohttp.ClientSession, path: str, **params: str) -> Any:
    async with http.get(path, params=params) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def post(http: aiohttp.ClientSession, plural: str, records: list[Any]) -> tuple[int, Any]:
    async with http.post(f"/api/v1/registry/{plural}", json=records) as resp:
        return resp.status, await resp.json()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "enterprises.csv").write_text(ENTERPRISES_CSV, encoding="utf-8")
    return tmp_path


async def test_import_reports_bad_rows_by_line_applies_good_ones_and_reruns_change_nothing(
    settings: Settings, http: aiohttp.ClientSession, files: Path
) -> None:
    path = str(files / "enterprises.csv")
    done = await cli_run(settings, "registry", "import", path, "--kind", "enterprises", code_=2)
    out = done.output
    assert "7 rows: 4 created, 0 updated, 0 unchanged, 3 rejected" in out
    assert f"{path}:4: enterprise_id: {BAD_CHECK} is not a unified social credit code" in out
    assert "(enterprise_id)" in out
    assert f"{path}:6: " in out and "(kind)" in out
    assert f"{path}:8: " in out and "(licence_status)" in out
    assert f"{path}:5:" not in out
    listed = await get(http, "/api/v1/enterprises")
    assert sorted(e["enterprise_id"] for e in listed["enterprises"]) == sorted(
        [REFINERY, DEPOT, STATION, SHOP]
    )

    again = await cli_run(settings, "registry", "import", path, "--kind", "enterprises", code_=2)
    assert "7 rows: 0 created, 0 updated, 4 unchanged, 3 rejected" in again.output
    view = await get(http, f"/api/v1/enterprises/{DEPOT}")
    assert view["version"] == 1 and len(view["history"]) == 1
    assert view["record"]["licence_status"] == "valid"  # the empty cell took the default


async def test_bad_records_are_refused_with_index_and_field_and_become_dead_letters(
    http: aiohttp.ClientSession,
) -> None:
    status, answer = await post(
        http,
        "inspectors",
        [
            {
                "inspector_id": "DY-INSP-001",
                "name": "Wang Lei",
                "unit": "Hekou AMR",
                "district": "Hekou District",
            },
            {"inspector_id": "DY-INSP-002", "name": "Li Min", "unit": "Hekou AMR"},
            "not an object",
        ],
    )
    assert status == 422
    assert answer["field"] == "1.district"
    assert [o["status"] for o in answer["outcomes"]] == ["created", "rejected", "rejected"]
    assert answer["outcomes"][2]["field"] == "(record)"
    assert answer["created"] == 1 and answer["rejected"] == 2
    letters = await eventually(lambda: _letters(http, "http:/api/v1/registry/inspectors", 2))
    assert {letter["key"] for letter in letters} == {"DY-INSP-002", None}
    assert any("district" in letter["reason"] for letter in letters)
    listed = await get(http, "/api/v1/inspectors")
    assert [i["inspector_id"] for i in listed["inspectors"]] == ["DY-INSP-001"]


async def _letters(http: aiohttp.ClientSession, source: str, n: int) -> list[dict[str, Any]] | None:
    found = [d for d in await dead_letters(http) if d["source"] == source]
    return found if len(found) >= n else None


async def test_products_need_catalog_specs_of_their_own_and_a_batch_has_a_limit(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    status, answer = await post(
        http,
        "products",
        [
            {"product": "motor diesel", "spec_ids": ["GB19147-2016:VI:0"], "name_zh": "车用柴油"},
            {"product": "tyres"},
            {"product": "motor gasoline", "spec_ids": ["GB19147-2016:VI:0"]},
            {"product": "copper conductors", "spec_ids": ["GB/T3956-2008:9:1"]},
        ],
    )
    assert status == 422
    assert [o["status"] for o in answer["outcomes"]] == ["created", "created", "rejected", "rejected"]
    assert "is a spec of 'motor diesel'" in answer["outcomes"][2]["error"]
    assert "not in the specification catalog" in answer["outcomes"][3]["error"]
    products = await get(http, "/api/v1/products")
    assert {p["product"]: p["spec_ids"] for p in products["products"]} == {
        "motor diesel": ["GB19147-2016:VI:0"],
        "tyres": [],
    }
    too_many = [{"product": f"p{n}"} for n in range(settings.registry_max_batch + 1)]
    status, answer = await post(http, "products", too_many)
    assert status == 413 and answer["field"] == "body"


async def test_an_update_makes_a_version_and_snapshots_answer_for_before_and_after(
    store: Store, http: aiohttp.ClientSession
) -> None:
    station = {
        "enterprise_id": STATION,
        "name": "Hekou Gudao Filling Station",
        "district": "Hekou District",
        "kind": "filling-station",
        "products": ["motor gasoline"],
        "supplied_by": [DEPOT],
    }
    status, first = await post(http, "enterprises", [station])
    assert status == 200 and first["outcomes"][0]["status"] == "created"
    registry = RegistryStore(store)
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    status, second = await post(http, "enterprises", [station | {"licence_status": "suspended"}])
    assert status == 200 and second["outcomes"][0] == {
        "index": 0,
        "id": STATION,
        "status": "updated",
        "version": 2,
    }
    before = await registry.snapshot(between)
    after = await registry.snapshot()
    assert [e.licence_status.value for e in before.enterprises] == ["valid"]
    assert [e.licence_status.value for e in after.enterprises] == ["suspended"]
    assert {lab.lab_id for lab in after.labs} == {"LAB-1", "LAB-2"}
    assert before.digest() != after.digest()
    assert (await registry.enterprise(STATION)).licence_status.value == "suspended"

    view = await get(http, f"/api/v1/enterprises/{STATION}")
    assert [h["version"] for h in view["history"]] == [1, 2]
    assert view["history"][0]["valid_to"] == view["history"][1]["valid_from"]
    assert view["history"][1]["valid_to"] is None

    as_of = await get(http, "/api/v1/registry/as-of", at=between.isoformat())
    assert as_of["enterprises"] == 1 and as_of["digest"] == before.digest()
    empty = await get(http, "/api/v1/registry/as-of", at="2000-01-01T00:00:00+08:00")
    assert empty["enterprises"] == 0


async def test_removal_closes_the_history_and_keeps_the_past(
    store: Store, settings: Settings, http: aiohttp.ClientSession, files: Path
) -> None:
    await cli_run(
        settings, "registry", "import", str(files / "enterprises.csv"), "--kind", "enterprises", code_=2
    )
    registry = RegistryStore(store)
    while_there = datetime.now(UTC)
    await asyncio.sleep(0.01)
    done = await cli_run(settings, "registry", "remove", "enterprises", SHOP, "--reason", "business closed")
    change = json.loads(done.stdout)
    assert change["op"] == "remove" and change["version"] == 2 and change["reason"] == "business closed"
    with pytest.raises(NotFound):
        await registry.enterprise(SHOP)
    assert SHOP not in {e.enterprise_id for e in (await registry.snapshot()).enterprises}
    assert SHOP in {e.enterprise_id for e in (await registry.snapshot(while_there)).enterprises}
    view = await get(http, f"/api/v1/enterprises/{SHOP}")
    assert view["removed_at"] is not None
    assert view["history"][0]["valid_to"] is not None and view["history"][1]["record"] is None
    async with http.delete(f"/api/v1/registry/enterprises/{SHOP}") as resp:
        assert resp.status == 404
    listed = await get(http, "/api/v1/enterprises", q="Jinyu")
    assert listed["total"] == 0


async def test_search_filters(settings: Settings, http: aiohttp.ClientSession, files: Path) -> None:
    await cli_run(
        settings, "registry", "import", str(files / "enterprises.csv"), "--kind", "enterprises", code_=2
    )

    async def ids(**params: str) -> list[str]:
        return [e["enterprise_id"] for e in (await get(http, "/api/v1/enterprises", **params))["enterprises"]]

    assert await ids(supplied_by=DEPOT) == [STATION]
    assert await ids(supplied_by=REFINERY) == [DEPOT]
    assert await ids(kind="depot") == [DEPOT]
    assert await ids(district="Hekou District") == [STATION]
    assert sorted(await ids(product="motor diesel")) == sorted([REFINERY, DEPOT, STATION])
    assert await ids(q="gudao") == [STATION]
    assert await ids(q=REFINERY[-6:].lower()) == [REFINERY]
    assert await ids(q="100%_") == []
    page = await get(http, "/api/v1/enterprises", limit="2", offset="1")
    assert page["count"] == 2 and page["total"] == 4
    async with http.get("/api/v1/enterprises", params={"colour": "red"}) as resp:
        assert resp.status == 422 and (await resp.json())["field"] == "colour"
    async with http.get("/api/v1/enterprises", params={"kind": "refinery"}) as resp:
        assert resp.status == 422 and (await resp.json())["field"] == "kind"
    listed = await cli_run(settings, "registry", "list", "enterprises", "--supplied-by", DEPOT)
    assert "1 shown of 1" in listed.output
    listed = await cli_run(settings, "registry", "list", "enterprises", "--supplied-by", DEPOT, "--json")
    assert [e["enterprise_id"] for e in json.loads(listed.stdout)["enterprises"]] == [STATION]
    shown = await cli_run(settings, "registry", "show", DEPOT)
    assert json.loads(shown.stdout)["record"]["supplied_by"] == [REFINERY]


async def test_every_change_is_an_event_on_the_registry_topic(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    product = {"product": "tyres", "name_zh": "轮胎"}
    await post(http, "products", [product])
    await post(http, "products", [product])  # unchanged: no event
    await post(http, "products", [product | {"display_name": "Tyres"}])
    async with http.delete("/api/v1/registry/products/tyres", params={"reason": "out of scope"}) as resp:
        assert resp.status == 200
    consumer = AIOKafkaConsumer(
        f"{settings.topic_namespace}.registry",
        bootstrap_servers=settings.bootstrap,
        group_id=f"probe-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen: list[RegistryChange] = []

        async def three() -> list[RegistryChange] | None:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(RegistryChange.from_json(r.value or b"") for r in records)
                assert all(r.key == b"tyres" for r in records)
            return seen if len(seen) >= 3 else None

        await eventually(three)
    finally:
        await consumer.stop()
    assert [(c.op, c.version, c.change_id) for c in seen] == [
        ("upsert", 1, "product:tyres:1"),
        ("upsert", 2, "product:tyres:2"),
        ("remove", 3, "product:tyres:3"),
    ]
    assert seen[1].record is not None and seen[1].record["display_name"] == "Tyres"
    assert seen[2].record is None and seen[2].reason == "out of scope" and seen[2].changed_by == "admin"


async def test_the_demo_directory_loads_once(
    store: Store, settings: Settings, http: aiohttp.ClientSession
) -> None:
    from adapters import kafka

    producer = kafka.producer(settings)
    await producer.start()
    try:
        counts = await load_demo_registry(store, settings)
        again = await load_demo_registry(store, settings)
    finally:
        await producer.stop()
    assert counts == again == {"products": 8, "enterprises": 3004, "inspectors": 100}
    snapshot = await RegistryStore(store).snapshot()
    assert len(snapshot.enterprises) == 3004 and len(snapshot.inspectors) == 100
    view = await get(http, f"/api/v1/enterprises/{snapshot.enterprises[0].enterprise_id}")
    assert view["version"] == 1  # loading it again made no new versions
    stations = await get(http, "/api/v1/enterprises", kind="filling-station", limit="1")
    assert stations["total"] == 360
    done = await cli_run(settings, "registry", "demo", "--load")  # through the API: the same directory
    assert "3004 rows: 0 created, 0 updated, 3004 unchanged, 0 rejected" in done.output


async def test_the_example_files_import_cleanly(settings: Settings, http: aiohttp.ClientSession) -> None:
    examples = Path(__file__).parents[2] / "examples" / "registry"
    for kind, names in (
        ("products", ["products.csv"]),
        ("enterprises", ["enterprises.csv", "enterprises.jsonl"]),
        ("inspectors", ["inspectors.csv"]),
    ):
        await cli_run(settings, "registry", "import", *(str(examples / n) for n in names), "--kind", kind)
    counts = {
        plural: (await get(http, f"/api/v1/{plural}"))["total"]
        for plural in ("products", "enterprises", "inspectors")
    }
    assert counts == {"products": 8, "enterprises": 21, "inspectors": 4}
    inspectors = await get(http, "/api/v1/inspectors", unit="guangrao")
    assert [i["inspector_id"] for i in inspectors["inspectors"]] == ["DY-INSP-018", "DY-INSP-025"]
