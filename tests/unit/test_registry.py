"""The directory's pure parts: credit-code check digits, row parsing, the change event, the demo."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from spotcheck import draws
from spotcheck.errors import InvalidInput
from spotcheck.registry import (
    Enterprise,
    EnterpriseKind,
    Inspector,
    LicenceStatus,
    Product,
    RecordKind,
    RegistryChange,
    from_csv_row,
    kind_of,
    parse_record,
    record_json,
    same_record,
    to_csv_row,
    uscc_check_digit,
    valid_uscc,
)
from spotcheck.registry_demo import DISTRICTS, generate, org_code_check
from spotcheck.specs import load_catalog

SPECS = {spec.id: spec.product for spec in load_catalog().specs()}


def code(body: str) -> str:
    return body + uscc_check_digit(body)


GOOD = code("91370502MA3C00001")
OTHER = code("91370503MA3C00002")


def enterprise(**overrides: Any) -> dict[str, Any]:
    return {
        "enterprise_id": GOOD,
        "name": "Dongying Lihua Petrochemical Co., Ltd.",
        "district": "Dongying District",
        "kind": "producer",
        "products": ["motor gasoline", "motor diesel"],
    } | overrides


# --- check digits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "known",
    ["91350100M000100Y43", "91440300708461136T"],  # the standard's example; a published code
)
def test_published_codes_carry_a_valid_check_digit(known: str) -> None:
    assert valid_uscc(known)
    assert uscc_check_digit(known[:17]) == known[17]


def test_any_changed_character_breaks_the_check_digit() -> None:
    for position in range(17):
        for replacement in "0A":
            changed = GOOD[:position] + replacement + GOOD[position + 1 :]
            if changed != GOOD:
                assert not valid_uscc(changed), changed


@pytest.mark.parametrize("bad", ["", "91370502MA3C0000", GOOD + "0", GOOD[:17] + "I", GOOD.lower()])
def test_malformed_codes_are_not_valid(bad: str) -> None:
    assert not valid_uscc(bad)


def test_check_digit_refuses_a_body_outside_the_alphabet() -> None:
    with pytest.raises(ValueError, match="17 characters"):
        uscc_check_digit("91370502MA3C0000O")  # letter O is not in the code's alphabet


@pytest.mark.parametrize("known", ["91350100M000100Y43", "91440300708461136T"])
def test_the_organisation_code_inside_a_credit_code_checks_out(known: str) -> None:
    assert org_code_check(known[8:16]) == known[16]  # GB 11714, characters 9-17


# --- parsing -----------------------------------------------------------------------------------


def field_of(kind: Any, raw: Any) -> str | None:
    with pytest.raises(InvalidInput) as refused:
        parse_record(kind, raw, spec_products=SPECS)
    return refused.value.field


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"enterprise_id": "91370502MA3C0000"}, "enterprise_id"),  # too short
        ({"enterprise_id": GOOD[:17] + ("0" if GOOD[17] != "0" else "1")}, "enterprise_id"),  # check digit
        ({"enterprise_id": 913705}, "enterprise_id"),  # a number
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"district": "x" * 101}, "district"),
        ({"kind": "refinery"}, "kind"),
        ({"products": "motor gasoline"}, "products"),  # JSON: a list, not a string
        ({"products": []}, "products"),
        ({"products": [1]}, "products.0"),
        ({"licence_status": "lapsed"}, "licence_status"),
        ({"supplied_by": ["NOT-A-CODE"]}, "supplied_by.0"),
        ({"supplied_by": [OTHER[:17] + ("0" if OTHER[17] != "0" else "1")]}, "supplied_by"),
        ({"supplied_by": [GOOD]}, "supplied_by"),  # supplies itself
        ({"colour": "red"}, "colour"),  # unknown field
    ],
)
def test_every_bad_enterprise_field_is_named(overrides: dict[str, Any], field: str) -> None:
    assert field_of("enterprise", enterprise(**overrides)) == field


def test_missing_fields_are_named() -> None:
    raw = enterprise()
    del raw["district"]
    assert field_of("enterprise", raw) == "district"
    assert field_of("inspector", {"inspector_id": "I-1", "name": "Wang Lei", "district": "x"}) == "unit"


@pytest.mark.parametrize("raw", ["text", 3, None, ["a"]])
def test_a_record_is_an_object(raw: Any) -> None:
    assert field_of("enterprise", raw) == "(record)"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"inspector_id": "has space"}, "inspector_id"),
        ({"unit": ""}, "unit"),
        ({"excluded_enterprises": ["123"]}, "excluded_enterprises.0"),
        ({"excluded_enterprises": [OTHER[:17] + ("0" if OTHER[17] != "0" else "1")]}, "excluded_enterprises"),
    ],
)
def test_every_bad_inspector_field_is_named(overrides: dict[str, Any], field: str) -> None:
    raw = {
        "inspector_id": "DY-INSP-001",
        "name": "Wang Lei",
        "unit": "Hekou AMR",
        "district": "Hekou District",
    }
    assert field_of("inspector", raw | overrides) == field


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        (
            {"product": "motor diesel", "spec_ids": ["GB19147-2016:VI:7"]},
            "spec_ids",
            "not in the specification",
        ),
        (
            {"product": "motor gasoline", "spec_ids": ["GB19147-2016:VI:0"]},
            "spec_ids",
            "a spec of 'motor diesel'",
        ),
        ({"product": "a/b"}, "product", "pattern"),
        ({"product": "tyres", "name_zh": ""}, "name_zh", "at least 1"),
        ({"product": "tyres", "spec_ids": "GB19147-2016:VI:0"}, "spec_ids", "tuple"),
    ],
)
def test_bad_products_are_named(raw: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as refused:
        parse_record("product", raw, spec_products=SPECS)
    assert refused.value.field == field


def test_good_records_are_canonical() -> None:
    parsed = parse_record("enterprise", enterprise(supplied_by=[OTHER, OTHER]))
    assert isinstance(parsed, Enterprise)
    assert parsed.products == ("motor diesel", "motor gasoline")
    assert parsed.supplied_by == (OTHER,)
    assert parsed.licence_status is LicenceStatus.VALID
    tyres = parse_record("product", {"product": "tyres"}, spec_products=SPECS)
    assert tyres == Product(product="tyres")


def test_csv_rows_become_records_and_back() -> None:
    text = (
        "enterprise_id,name,district,kind,products,licence_status,supplied_by\n"
        f'{GOOD},"Lihua, Ltd.",Dongying District,depot, motor gasoline ; motor diesel ,,{OTHER}\n'
    )
    row = next(csv.DictReader(io.StringIO(text)))
    obj = from_csv_row("enterprise", row)
    assert obj == {
        "enterprise_id": GOOD,
        "name": "Lihua, Ltd.",
        "district": "Dongying District",
        "kind": "depot",
        "products": ["motor gasoline", "motor diesel"],
        "supplied_by": [OTHER],
    }
    parsed = parse_record("enterprise", obj)
    assert parse_record("enterprise", from_csv_row("enterprise", to_csv_row(parsed))) == parsed


def test_a_csv_row_with_more_cells_than_columns_is_refused() -> None:
    row = next(csv.DictReader(io.StringIO("product,spec_ids\ntyres,,extra\n")))
    with pytest.raises(InvalidInput, match="more cells"):
        from_csv_row("product", row)


def test_kinds_by_plural() -> None:
    assert kind_of("inspectors") == "inspector"
    with pytest.raises(InvalidInput) as refused:
        kind_of("labs")
    assert refused.value.field == "kind"


def test_change_event_round_trips_and_names_its_version() -> None:
    record = parse_record("enterprise", enterprise())
    change = RegistryChange.make(
        "enterprise", GOOD, "upsert", record_json(record), 3, datetime(2026, 11, 1, tzinfo=UTC), "admin"
    )
    assert change.change_id == f"enterprise:{GOOD}:3"
    assert change.to_dict()["schema"] == "registry-change/1"
    assert RegistryChange.from_json(change.to_json()) == change
    assert same_record(change.record, record)
    assert not same_record(change.record, parse_record("enterprise", enterprise(name="Other")))
    with pytest.raises(ValueError):
        RegistryChange.make("enterprise", GOOD, "upsert", None, 0, datetime.now(UTC), "admin")


def test_draws_still_exports_the_directory_models() -> None:
    assert draws.Enterprise is Enterprise and draws.Inspector is Inspector
    assert draws.EnterpriseKind is EnterpriseKind and draws.LicenceStatus is LicenceStatus


# --- the demo directory ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Any:
    return generate(2026)


def test_demo_sizes(demo: Any) -> None:
    kinds = Counter(e.kind for e in demo.enterprises)
    assert 2800 <= len(demo.enterprises) <= 3200
    assert 200 <= kinds[EnterpriseKind.FILLING_STATION] <= 500
    assert kinds[EnterpriseKind.DEPOT] > 0
    assert len(demo.inspectors) == 100
    assert {e.district for e in demo.enterprises} == set(DISTRICTS)
    assert {i.district for i in demo.inspectors} == set(DISTRICTS)
    assert 5 <= sum(1 for i in demo.inspectors if i.excluded_enterprises) <= 40
    licences = Counter(e.licence_status for e in demo.enterprises)
    assert (
        0
        < sum(licences[s] for s in (LicenceStatus.EXPIRED, LicenceStatus.SUSPENDED, LicenceStatus.REVOKED))
        < 100
    )


def test_demo_records_are_what_an_import_accepts(demo: Any) -> None:
    parts: tuple[tuple[RecordKind, Any], ...] = (
        ("product", demo.products),
        ("enterprise", demo.enterprises),
        ("inspector", demo.inspectors),
    )
    for kind, records in parts:
        for record in records:
            assert parse_record(kind, record_json(record), spec_products=SPECS) == record
    assert len({e.enterprise_id for e in demo.enterprises}) == len(demo.enterprises)
    assert all(e.enterprise_id[2:8] == DISTRICTS[e.district][0] for e in demo.enterprises)
    assert all(org_code_check(e.enterprise_id[8:16]) == e.enterprise_id[16] for e in demo.enterprises)


def test_demo_supply_links_point_up_the_chain(demo: Any) -> None:
    by_id = {e.enterprise_id: e for e in demo.enterprises}
    stations = [e for e in demo.enterprises if e.kind is EnterpriseKind.FILLING_STATION]
    depots = [e for e in demo.enterprises if e.kind is EnterpriseKind.DEPOT]
    assert all(
        s.supplied_by and all(by_id[d].kind is EnterpriseKind.DEPOT for d in s.supplied_by) for s in stations
    )
    for depot in depots:
        assert depot.supplied_by
        suppliers = [by_id[r] for r in depot.supplied_by]
        assert all(r.kind is EnterpriseKind.PRODUCER and "motor gasoline" in r.products for r in suppliers)
    every_link = {s for e in demo.enterprises for s in e.supplied_by}
    assert every_link <= set(by_id)
    excluded = {x for i in demo.inspectors for x in i.excluded_enterprises}
    assert excluded <= set(by_id)


def test_demo_products_carry_their_catalog_specs(demo: Any) -> None:
    products = {p.product: p for p in demo.products}
    assert products["motor diesel"].spec_ids == tuple(
        sorted(s for s, p in SPECS.items() if p == "motor diesel")
    )
    assert products["tyres"].spec_ids == ()
    assert {p for e in demo.enterprises for p in e.products} == set(products)


def test_demo_is_the_same_for_a_seed_and_differs_between_seeds(demo: Any) -> None:
    assert generate(2026) == demo
    other = generate(7)
    assert other.enterprises != demo.enterprises
    assert len(other.enterprises) == len(demo.enterprises)
