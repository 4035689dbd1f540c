"""Lab rules: accreditation scope, the refusals every way in shares, task assignment, API keys."""

from __future__ import annotations

import pytest

from spotcheck.errors import InvalidInput
from spotcheck.labs import (
    Lab,
    ScopeEntry,
    check_assignment,
    key_matches,
    key_prefix,
    new_key,
    result_refusal,
    unknown_scope_items,
)
from spotcheck.specs import load_catalog
from tests.unit.test_samples import make_result, make_task

GASOLINE = load_catalog().get("GB17930-2016:VIB:92")


def lab(*scope: ScopeEntry, enabled: bool = True) -> Lab:
    return Lab(lab_id="LAB-7", name="Lab 7", scope=scope, enabled=enabled)


@pytest.mark.parametrize(
    ("entry", "spec", "product", "item", "covered"),
    [
        (ScopeEntry(spec="GB17930-2016:*"), "GB17930-2016:VIA:95", "motor gasoline", "ron", True),
        (ScopeEntry(spec="GB17930-2016:*"), "GB19147-2016:VI:0", "motor diesel", "sulfur", False),
        (ScopeEntry(product="motor diesel"), "GB19147-2016:VI:0", "motor diesel", "sulfur", True),
        (
            ScopeEntry(product="motor diesel", items=("sulfur",)),
            "GB19147-2016:VI:0",
            "motor diesel",
            "cetane_number",
            False,
        ),
        (
            ScopeEntry(spec="GB19147-2016:VI:0", product="motor diesel"),
            "GB19147-2016:VI:5",
            "motor diesel",
            "sulfur",
            False,
        ),
        (ScopeEntry(), "GB19147-2016:VI:0", "motor diesel", "sulfur", False),  # names nothing
    ],
)
def test_scope(entry: ScopeEntry, spec: str, product: str, item: str, covered: bool) -> None:
    assert entry.covers(spec, product, item) is covered


def test_scope_items_must_not_be_an_empty_list() -> None:
    with pytest.raises(ValueError, match="at least one item"):
        ScopeEntry(spec="*", items=())
    assert unknown_scope_items(lab(ScopeEntry(spec="*", items=("sulfur", "sulphur"))), {"sulfur", "ron"}) == [
        "sulphur"
    ]


@pytest.mark.parametrize(
    ("the_lab", "result", "reason", "field", "forbidden"),
    [
        (
            lab(ScopeEntry(spec="*")),
            make_result("R1", "ron", "92", lab_id="LAB-9"),
            "assigned to lab LAB-7, not LAB-9",
            "task_id",
            True,
        ),
        (None, make_result("R1", "ron", "92"), "not in the registry", "lab_id", True),
        (
            lab(ScopeEntry(spec="*"), enabled=False),
            make_result("R1", "ron", "92"),
            "disabled",
            "lab_id",
            True,
        ),
        (
            lab(ScopeEntry(spec="*", items=("sulfur",))),
            make_result("R1", "ron", "92"),
            "outside the accreditation scope",
            "item",
            True,
        ),
        (
            lab(ScopeEntry(spec="*")),
            make_result("R1", "sulfur", "0.0008", unit="% m/m"),
            "not the unit of sulfur",
            "unit",
            False,
        ),
    ],
)
def test_refusals(the_lab: Lab | None, result: object, reason: str, field: str, forbidden: bool) -> None:
    refusal = result_refusal(the_lab, make_task(lab_id="LAB-7"), GASOLINE, result)  # type: ignore[arg-type]
    assert refusal is not None
    assert reason in refusal.reason and (refusal.field, refusal.forbidden) == (field, forbidden)


def test_units_are_compared_by_meaning() -> None:
    ok = make_result("R1", "sulfur", "8.3", unit="MG / KG")
    assert result_refusal(lab(ScopeEntry(spec="*")), make_task(lab_id="LAB-7"), GASOLINE, ok) is None


def test_assignment_needs_a_known_enabled_accredited_lab() -> None:
    with pytest.raises(InvalidInput, match="not in the registry"):
        check_assignment(None, "LAB-7", GASOLINE.id, GASOLINE.product, ("ron",))
    with pytest.raises(InvalidInput, match="accredited for sulfur"):
        check_assignment(
            lab(ScopeEntry(spec="*", items=("ron",))),
            "LAB-7",
            GASOLINE.id,
            GASOLINE.product,
            ("ron", "sulfur"),
        )
    check_assignment(
        lab(ScopeEntry(product="motor gasoline")), "LAB-7", GASOLINE.id, GASOLINE.product, ("ron", "sulfur")
    )


def test_keys_are_random_and_only_their_hash_is_needed() -> None:
    key, prefix, hashed = new_key()
    other, _, _ = new_key()
    assert key != other and key_prefix(key) == prefix and prefix not in hashed
    assert key_matches(key, hashed) and not key_matches(other, hashed)
    assert key_prefix("sclab_short_x") is None and key_prefix("Bearer abc") is None
