"""Event schemas at the door: known versions only, no text PostgreSQL cannot store, dead letters keep
any bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotcheck.custody import CustodyStep
from spotcheck.events import (
    DeadLetter,
    LabResult,
    SamplingTask,
    Verdict,
    describe_validation_error,
    unstorable_text,
)

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def task(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": "T-2026-000042",
        "sample_id": "T-2026-000042-A",
        "enterprise_id": "E-1",
        "product": "92# motor gasoline",
        "spec": "GB17930-2016:VIB:92",
        "items": ["ron", "sulfur"],
        "lab_id": "LAB-1",
        "created_at": NOW.isoformat(),
    }
    body.update(kw)
    return body


def result(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "result_id": "LAB1-1",
        "lab_id": "LAB-1",
        "task_id": "T-2026-000042",
        "sample_id": "T-2026-000042-A",
        "item": "sulfur",
        "value": "8.3",
        "measured_at": NOW.isoformat(),
    }
    body.update(kw)
    return body


def step(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "step_id": "S-1",
        "task_id": "T-2026-000042",
        "step": "sampling",
        "actor": "INS-1",
        "actor_role": "inspector",
        "at": NOW.isoformat(),
    }
    body.update(kw)
    return body


def refusal(model: type[Any], body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(json.dumps(body))
    return describe_validation_error(caught.value)


# --- schema name and version -------------------------------------------------------------------


def test_the_versions_a_model_reads_are_explicit() -> None:
    assert SamplingTask.reads() == ("task/1",)
    assert LabResult.reads() == ("lab-result/1",)
    assert Verdict.reads() == ("verdict/1",)
    assert CustodyStep.reads() == ("custody/1",)  # a model that lists none reads the one it writes
    assert "dead-letter/1" in DeadLetter.reads() and DeadLetter.SCHEMA in DeadLetter.reads()


@pytest.mark.parametrize(
    ("model", "body", "schema"),
    [
        (SamplingTask, task(), "task/99"),
        (LabResult, result(), "lab-result/99"),
        (CustodyStep, step(), "custody/99"),
        (LabResult, result(), "lab-result/01"),
        (LabResult, result(), "lab-result"),
    ],
)
def test_an_unknown_version_is_refused(model: type[Any], body: dict[str, Any], schema: str) -> None:
    reason = refusal(model, {"schema": schema, **body})
    assert repr(schema) in reason and "version" in reason
    assert model.SCHEMA in reason  # says what it reads


def test_another_schema_name_is_refused() -> None:
    reason = refusal(SamplingTask, {"schema": "lab-result/1", **task()})
    assert "'lab-result/1' is not 'task/1'" in reason


def test_a_known_or_absent_schema_is_read() -> None:
    assert SamplingTask.model_validate_json(json.dumps({"schema": "task/1", **task()})).schema_ == "task/1"
    assert LabResult.model_validate_json(json.dumps(result())).schema_ == "lab-result/1"


# --- text PostgreSQL cannot store ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "where"),
    [
        (SamplingTask, task(product="92#\u0000 motor gasoline"), "product"),
        (SamplingTask, task(items=["ron", "sul\u0000fur"]), "items.1"),
        (LabResult, result(method="SH/T\u00000689"), "method"),
        (LabResult, result(reason="\u0000"), "reason"),
        (CustodyStep, step(reason="at the gate\u0000"), "reason"),
        (CustodyStep, step(where={"text": "No. 1\u0000 Road"}), "where.text"),
    ],
)
def test_a_nul_character_is_refused_naming_the_field(
    model: type[Any], body: dict[str, Any], where: str
) -> None:
    reason = refusal(model, body)
    assert f"{where}: text holds a NUL character (U+0000)" in reason


def test_a_nul_in_python_input_and_a_lone_surrogate_are_refused_too() -> None:
    with pytest.raises(ValidationError, match=r"product: text holds a NUL character"):
        SamplingTask.model_validate(task(product="a\x00b"))
    with pytest.raises(ValidationError, match=r"method"):  # pydantic refuses it before us
        LabResult.model_validate(result(method="a\ud800b"))


def test_unstorable_text_is_found_with_its_path() -> None:
    assert unstorable_text({"results": [{"result_id": "ok"}, {"result_id": "a\x00"}]}) == (
        "results.1.result_id",
        "text holds a NUL character (U+0000), which cannot be stored",
    )
    assert unstorable_text({"prod\x00uct": "x"}) == (
        "prod\\u0000uct",
        "the name holds a NUL character (U+0000), which cannot be stored",
    )
    assert unstorable_text(["\udc80"]) == (
        "0",
        "text holds a lone surrogate (U+D800-U+DFFF), which cannot be stored",
    )
    assert unstorable_text({"a": [1, 2.5, None, True, "汽油"]}) is None


def test_nested_text_of_a_verdict_is_checked() -> None:
    judged = {
        "item": "sulfur",
        "value": "8.3",
        "unit": "mg/kg\u0000",
        "limit": {"max": "10", "text": "≤ 10"},
        "comparison": "whole-value",
        "compared_value": "8.3",
        "judgement": "pass",
    }
    body = {
        "verdict_id": "T-2026-000042/1",
        "task_id": "T-2026-000042",
        "sample_id": "T-2026-000042-A",
        "version": 1,
        "outcome": "qualified",
        "spec": "GB17930-2016:VIB:92",
        "enterprise_id": "E-1",
        "product": "92# motor gasoline",
        "lab_id": "LAB-1",
        "items": [judged],
        "result_ids": ["LAB1-1"],
        "last_result_at": NOW.isoformat(),
        "decided_at": NOW.isoformat(),
    }
    assert "items.0.unit: text holds a NUL character" in refusal(Verdict, body)


# --- dead letters carry anything ----------------------------------------------------------------


def test_a_dead_letter_keeps_any_bytes_and_text() -> None:
    raw = b'{"product": "a\x00b"}\xff\xfe'
    letter = DeadLetter.of("t.tasks", b"T-\x00", raw, "invalid task/1: product\x00", NOW, origin="0@7")
    assert letter.raw() == raw
    assert letter.key == "T-\x00" and "\x00" in letter.reason
    again = DeadLetter.model_validate_json(letter.to_json())
    assert again == letter and again.raw() == raw
    assert again.schema_ == DeadLetter.SCHEMA


def test_a_dead_letter_of_text_keeps_it_as_utf8() -> None:
    letter = DeadLetter.of("http:/api/v1/tasks", None, '{"product": "汽油\x00"}', "refused", NOW)
    assert letter.payload == '{"product": "汽油\x00"}'
    assert letter.payload_base64 is None  # text as it came: the payload is the bytes, in UTF-8
    assert letter.raw() == '{"product": "汽油\x00"}'.encode()


def test_a_dead_letter_of_the_first_version_is_still_read() -> None:
    old = {
        "schema": "dead-letter/1",
        "letter_id": "abc",
        "source": "t.lab-results",
        "key": None,
        "payload": "{not json",
        "reason": "invalid lab-result/1",
        "rejected_at": NOW.isoformat(),
    }
    letter = DeadLetter.model_validate_json(json.dumps(old))
    assert letter.raw() == b"{not json"
