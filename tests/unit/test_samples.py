"""The sample state machine: which results are accepted, which rejected, and verdict versions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from spotcheck.events import LabResult, Outcome, SamplingTask
from spotcheck.samples import Rejected, SampleState, sampling_day

ZONE = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def make_task(**kw: object) -> SamplingTask:
    fields: dict[str, object] = dict(
        task_id="T-2026-000042",
        sample_id="T-2026-000042-A",
        enterprise_id="E-1",
        product="92# gasoline",
        spec="GB17930-2016:VIB:92",
        items=("ron", "sulfur"),
        lab_id="LAB-7",
        created_at=NOW,
    )
    fields.update(kw)
    return SamplingTask.model_validate(fields)


def make_result(rid: str, item: str, value: str, **kw: object) -> LabResult:
    fields: dict[str, object] = dict(
        result_id=rid,
        lab_id="LAB-7",
        task_id="T-2026-000042",
        sample_id="T-2026-000042-A",
        item=item,
        value=value,
        measured_at=NOW,
    )
    fields.update(kw)
    return LabResult.model_validate(fields)


def test_accepts_then_reaches_a_verdict_once_complete() -> None:
    state = SampleState(task=make_task())
    assert state.apply(make_result("R1", "ron", "92.4"))
    assert state.next_verdict(ZONE, lambda: NOW) is None  # sulfur still missing
    assert state.apply(make_result("R2", "sulfur", "8.30"))
    verdict = state.next_verdict(ZONE, lambda: NOW)
    assert verdict is not None and verdict.version == 1 and verdict.supersedes is None
    assert verdict.outcome is Outcome.QUALIFIED
    assert verdict.result_ids == ("R1", "R2")
    assert {j.item: str(j.value) for j in verdict.items} == {"ron": "92.4", "sulfur": "8.30"}
    assert state.next_verdict(ZONE, lambda: NOW) is None  # nothing changed since


def test_identical_resend_is_ignored_but_reuse_of_an_id_is_rejected() -> None:
    state = SampleState(task=make_task())
    first = make_result("R1", "ron", "92.4")
    assert state.apply(first)
    assert state.apply(first) is False
    with pytest.raises(Rejected, match="already received with other content"):
        state.apply(make_result("R1", "ron", "93.0"))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"lab_id": "LAB-9"}, "assigned to lab LAB-7, not LAB-9"),
        ({"sample_id": "T-2026-000042-B"}, "is not the sample of task"),
        ({"item": "olefins"}, "'olefins' is not planned"),
    ],
)
def test_foreign_results_are_rejected(overrides: dict[str, str], reason: str) -> None:
    state = SampleState(task=make_task())
    with pytest.raises(Rejected, match=reason):
        state.apply(make_result("R1", overrides.pop("item", "ron"), "92", **overrides))
    assert state.by_id == {}


def test_a_second_result_for_an_item_needs_amends() -> None:
    state = SampleState(task=make_task())
    state.apply(make_result("R1", "ron", "92.4"))
    with pytest.raises(Rejected, match="send a correction with amends"):
        state.apply(make_result("R2", "ron", "92.5"))


def test_correction_supersedes_and_makes_a_new_version() -> None:
    state = SampleState(task=make_task())
    state.apply(make_result("R1", "ron", "92.4"))
    state.apply(make_result("R2", "sulfur", "10.4"))
    first = state.next_verdict(ZONE, lambda: NOW)
    assert first is not None and first.outcome is Outcome.UNQUALIFIED
    assert state.apply(make_result("R3", "sulfur", "9.8", amends="R2", reason="re-measured"))
    second = state.next_verdict(ZONE, lambda: NOW)
    assert second is not None
    assert (second.version, second.supersedes, second.outcome) == (
        2,
        first.verdict_id,
        Outcome.QUALIFIED,
    )
    assert second.result_ids == ("R1", "R3")
    with pytest.raises(Rejected, match="already amended"):
        state.apply(make_result("R4", "sulfur", "9.7", amends="R2", reason="again"))


@pytest.mark.parametrize(
    ("amends", "item", "reason"),
    [("R-none", "sulfur", "not a result of task"), ("R1", "sulfur", "a result for 'ron'")],
)
def test_bad_corrections_are_rejected(amends: str, item: str, reason: str) -> None:
    state = SampleState(task=make_task())
    state.apply(make_result("R1", "ron", "92.4"))
    with pytest.raises(Rejected, match=reason):
        state.apply(make_result("R9", item, "1", amends=amends, reason="x"))


def test_restore_rebuilds_the_same_state_without_a_new_verdict() -> None:
    results = [
        make_result("R1", "ron", "92.4"),
        make_result("R2", "sulfur", "10.4"),
        make_result("R3", "sulfur", "9.8", amends="R2", reason="re-measured"),
    ]
    state = SampleState.restore(make_task(), results, version=2)
    assert state.current["sulfur"].result_id == "R3" and state.amended == {"R2"}
    assert state.next_verdict(ZONE, lambda: NOW) is None
    assert state.apply(results[0]) is False  # a replayed result stays harmless


def test_sampling_day_is_taken_in_the_bureau_zone() -> None:
    late_evening_utc = datetime(2026, 4, 30, 17, 30, tzinfo=UTC)  # 1 May 01:30 in Shanghai
    assert sampling_day(make_task(sampled_at=late_evening_utc), ZONE).isoformat() == "2026-05-01"
    assert sampling_day(make_task(created_at=late_evening_utc), ZONE).isoformat() == "2026-05-01"


def test_lab_result_schema_rules() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        make_result("R1", "ron", 92.4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a decimal number"):
        make_result("R1", "ron", "9,2")
    with pytest.raises(ValueError, match="must give a reason"):
        make_result("R2", "ron", "92", amends="R1")
    with pytest.raises(ValueError, match="timezone"):
        make_result("R1", "ron", "92", measured_at="2026-11-24T10:00:00")
    assert str(make_result("R1", "sulfur", "8.30").value) == "8.30"
    assert str(make_result("R1", "sulfur", Decimal("8.30")).value) == "8.30"  # built in Python
    with pytest.raises(ValueError, match="finite"):
        make_result("R1", "sulfur", Decimal("NaN"))
    assert make_result("R1", "sulfur", "8.30").to_dict()["value"] == "8.30"
