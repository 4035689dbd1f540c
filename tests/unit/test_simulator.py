"""The demo simulator's data: plausible values judge as intended, bad messages are really bad."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from producers.simulator import correction, demo_labs, malformed, simulated_results
from spotcheck.events import LabResult, Outcome
from spotcheck.samples import SampleState
from spotcheck.specs import load_catalog
from spotcheck.tasks import TaskRequest, build_task

ZONE = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("spec", [s.id for s in load_catalog().specs()])
@pytest.mark.parametrize("fail", [False, True])
def test_simulated_samples_pass_or_fail_as_asked(spec: str, fail: bool) -> None:
    lab = next(
        lab
        for lab in demo_labs().values()
        if any(lab.covers(spec, load_catalog().get(spec).product, i) for i in load_catalog().get(spec).codes)
    )
    rng = random.Random(spec)
    for n in range(20):
        task = build_task(
            TaskRequest(enterprise_id="E-1", product="p", spec=spec, lab_id=lab.lab_id, items=None),
            n,
            NOW,
            ZONE,
            _widened(lab, spec),
        )
        state = SampleState(task=task)
        for result in simulated_results(task, NOW.astimezone(ZONE).date(), fail, rng, NOW):
            state.apply(result)
        verdict = state.next_verdict(ZONE, lambda: NOW)
        assert verdict is not None
        assert verdict.outcome is (Outcome.UNQUALIFIED if fail else Outcome.QUALIFIED), verdict.items


def _widened(lab, spec):  # type: ignore[no-untyped-def]
    """The demo lab, accredited for every item of the spec (some demo scopes are partial)."""
    from spotcheck.labs import ScopeEntry

    return lab.model_copy(update={"scope": (ScopeEntry(spec=spec),)})


def test_malformed_messages_are_refused_and_corrections_amend() -> None:
    rng = random.Random(3)
    result = LabResult(
        result_id="R1", lab_id="L", task_id="T", sample_id="T-A", item="sulfur", value="8.30", measured_at=NOW
    )
    for _ in range(10):
        with pytest.raises(ValidationError):
            LabResult.model_validate_json(malformed(result, rng))
    fix = correction(result, rng)
    assert fix.amends == "R1" and fix.reason and fix.result_id != "R1"
    assert fix.value.as_tuple().exponent == -2  # reported with the same digits
