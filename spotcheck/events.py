"""Event schemas: the frozen pydantic models carried on the topics (the public contract)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)


def decimal_string(value: Any, *, what: str = "a measured value", example: str = "8.30") -> Decimal:
    """A decimal written as a string, exactly: JSON numbers are refused because digits matter
    ("8.30" is not "8.3" for reporting, "3.0" is not "3" for rounding). A Decimal built in
    Python is taken as it is."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        return value
    if not isinstance(value, str):
        kind = {bool: "boolean", int: "int", float: "float"}.get(type(value), type(value).__name__)
        raise ValueError(
            f'{what} must be a decimal string such as "{example}", not the JSON {kind} '
            f"{json.dumps(value) if isinstance(value, int | float | bool) else repr(value)}"
        )
    try:
        parsed = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not parsed.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return parsed


Measured = Annotated[
    Decimal,
    BeforeValidator(decimal_string),
    PlainSerializer(lambda d: str(d), return_type=str, when_used="always"),
]
"""A Decimal read from a string and written back as the same string ("8.30" stays "8.30")."""

Ident = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


class Event(BaseModel):
    """Base of every topic value: frozen, strict about unknown fields, with a schema tag."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    SCHEMA: ClassVar[str]

    schema_: str = Field(default="", alias="schema", validate_default=True)

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        """Absent: this model's schema. Present: the same name (any version may be read)."""
        expected = cls.SCHEMA
        if not value:
            return expected
        if value.partition("/")[0] != expected.partition("/")[0]:
            raise ValueError(f"schema {value!r} is not {expected!r}")
        return value

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        return cls.model_validate_json(raw)


class TaskKind(StrEnum):
    RANDOM = "random"
    SPECIAL = "special"
    FOLLOW_UP = "follow-up"
    RETEST = "retest"


class SamplingTask(Event):
    """A sampling task: which enterprise's product is sampled, against which spec, tested where."""

    SCHEMA: ClassVar[str] = "task/1"

    task_id: Ident
    sample_id: Ident
    enterprise_id: Ident
    product: str = Field(min_length=1, max_length=200)
    spec: str
    items: tuple[str, ...] = Field(min_length=1)
    lab_id: Ident
    kind: TaskKind = TaskKind.RANDOM
    campaign_id: str | None = None
    draw_id: str | None = None  # the draw that selected it (random and special tasks)
    inspectors: tuple[str, ...] = ()
    created_at: AwareDatetime
    sampled_at: AwareDatetime | None = None
    sampling_due: AwareDatetime | None = None
    report_due: AwareDatetime | None = None


class LabResult(Event):
    """One measured test item, as a lab sends it (DESIGN.md, 'A lab result')."""

    SCHEMA: ClassVar[str] = "lab-result/1"

    result_id: Ident
    lab_id: Ident
    task_id: Ident
    sample_id: Ident
    item: str = Field(min_length=1, max_length=64)
    value: Measured
    unit: str | None = Field(default=None, max_length=32)
    method: str | None = Field(default=None, max_length=64)
    measured_at: AwareDatetime
    amends: Ident | None = None
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _correction_has_reason(self) -> Self:
        if self.amends is not None and not (self.reason and self.reason.strip()):
            raise ValueError("a correction (amends) must give a reason")
        if self.amends == self.result_id:
            raise ValueError("a result cannot amend itself")
        return self


class Outcome(StrEnum):
    QUALIFIED = "qualified"
    UNQUALIFIED = "unqualified"
    INCOMPLETE = "incomplete"


class Comparison(StrEnum):
    WHOLE = "whole-value"
    ROUNDED = "rounded-value"


class LimitView(BaseModel):
    """A limit as applied to one sample: the bounds in force (grade and season resolved)."""

    model_config = ConfigDict(frozen=True)

    min: str | None = None
    max: str | None = None
    text: str


class ItemJudgement(BaseModel):
    """The judgement of one test item against its limit."""

    model_config = ConfigDict(frozen=True)

    item: str
    value: Measured
    unit: str | None = None
    limit: LimitView
    comparison: Comparison
    compared_value: Measured
    judgement: Literal["pass", "fail"]


class Verdict(Event):
    """The verdict of a sample; a correction produces a new version that supersedes the last."""

    SCHEMA: ClassVar[str] = "verdict/1"

    verdict_id: str
    task_id: Ident
    sample_id: Ident
    version: int = Field(ge=1)
    supersedes: str | None = None
    outcome: Outcome
    spec: str
    enterprise_id: Ident
    product: str
    lab_id: Ident
    items: tuple[ItemJudgement, ...]
    result_ids: tuple[str, ...]
    last_result_at: AwareDatetime
    decided_at: AwareDatetime


class DeadLetter(Event):
    """Rejected input: the payload as received, where it came from and why it was refused."""

    SCHEMA: ClassVar[str] = "dead-letter/1"

    letter_id: str
    source: str
    key: str | None = None
    payload: str
    reason: str
    rejected_at: AwareDatetime

    @classmethod
    def of(
        cls,
        source: str,
        key: str | bytes | None,
        payload: bytes | str | None,
        reason: str,
        rejected_at: datetime,
        origin: str = "",
    ) -> DeadLetter:
        """A dead letter whose id depends only on where it came from and what it was, so that
        rejecting the same message twice (a re-delivery) stores it once. `origin` tells apart
        two messages with the same content (for a topic: partition and offset)."""
        key_text = payload_text(key) if key is not None else None
        body = payload_text(payload)
        digest = hashlib.sha256("\x1f".join((source, origin, key_text or "", body, reason)).encode())
        return cls(
            letter_id=digest.hexdigest()[:32],
            source=source,
            key=key_text,
            payload=body,
            reason=reason,
            rejected_at=rejected_at,
        )


def describe_validation_error(exc: Exception) -> str:
    """One line naming each bad field and why, from a pydantic ValidationError."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    parts = []
    for err in errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "(body)"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def payload_text(raw: bytes | str | None) -> str:
    """The payload of a rejected message as text, never failing (binary is shown escaped)."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return json.dumps(raw.decode("latin-1"))
