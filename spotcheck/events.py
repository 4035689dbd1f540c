"""Event schemas: the frozen pydantic models carried on the topics (the public contract)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
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


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` (text columns and jsonb refuse U+0000; UTF-8 has no lone
    surrogates), or None."""
    if "\x00" in text:
        return "holds a NUL character (U+0000), which cannot be stored"
    if not text.isascii() and _SURROGATE.search(text):
        return "holds a lone surrogate (U+D800-U+DFFF), which cannot be stored"
    return None


def unstorable_text(value: Any) -> tuple[str, str] | None:
    """The first text in `value` (a string, or one inside lists, mappings and models, keys included)
    that PostgreSQL cannot store: its dotted path ("" for `value` itself; a key's NUL shown as
    \\u0000) and the reason, e.g. ("results.0.result_id", "text holds a NUL character …")."""
    return None if _storable(value) else _find_unstorable(value, ())


def _storable(value: Any) -> bool:
    """The quick check behind `unstorable_text` (which then finds where and why); it runs on every
    event read, so the common values (plain text, numbers, times, None) cost one type test."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or _SURROGATE.search(value) is None)
    if kind in _PLAIN or value is None:
        return True
    if kind is tuple or kind is list:
        return all(map(_storable, value))
    if kind is dict:
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, BaseModel):
        return _storable_fields(value)
    return True  # enums, numbers, times: nothing PostgreSQL would refuse


def _storable_fields(model: BaseModel) -> bool:
    for value in model.__dict__.values():  # `_storable` inlined for plain text, the common case
        if type(value) is str:
            if "\x00" in value or not (value.isascii() or _SURROGATE.search(value) is None):
                return False
        elif value is not None and type(value) not in _PLAIN and not _storable(value):
            return False
    return True


_PLAIN = frozenset({int, float, bool, Decimal, datetime})


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p).replace("\x00", "\\u0000") for p in path)


def _find_unstorable(value: Any, path: tuple[str | int, ...]) -> tuple[str, str] | None:
    if isinstance(value, str):
        problem = _text_problem(value)
        return (_dotted(path), f"text {problem}") if problem else None
    pairs: Any
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        pairs = ((fields[name].alias or name, getattr(value, name)) for name in fields)
    elif isinstance(value, Mapping):
        pairs = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        pairs = enumerate(value)
    else:
        return None
    for key, item in pairs:
        if isinstance(key, str):
            problem = _text_problem(key)
            if problem:
                return _dotted((*path, key)), f"the name {problem}"
        found = _find_unstorable(item, (*path, key))
        if found:
            return found
    return None


class Event(BaseModel):
    """Base of every topic value: frozen, strict about unknown fields, with a schema tag.

    `SCHEMA` is the version a model writes; `READS` lists the versions it reads (none listed: only
    the one it writes). A value of another name or of a version not listed is refused, and so is
    text PostgreSQL cannot store (NUL, lone surrogates), wherever it is in the value."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    SCHEMA: ClassVar[str]
    READS: ClassVar[tuple[str, ...]] = ()
    TEXT_MUST_BE_STORABLE: ClassVar[bool] = True

    schema_: str = Field(default="", alias="schema", validate_default=True)

    @classmethod
    def reads(cls) -> tuple[str, ...]:
        """The schema versions this model reads."""
        return cls.READS or (cls.SCHEMA,)

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        """Absent: this model's schema. Present: a version this model reads."""
        expected = cls.SCHEMA
        if not value:
            return expected
        if value.partition("/")[0] != expected.partition("/")[0]:
            raise ValueError(f"schema {value!r} is not {expected!r}")
        if value not in cls.reads():
            raise ValueError(
                f"schema {value!r} is a version this platform does not read (it reads "
                f"{', '.join(cls.reads())})"
            )
        return value

    @model_validator(mode="after")
    def _storable_text(self) -> Self:
        if self.TEXT_MUST_BE_STORABLE and not _storable_fields(self):
            found = unstorable_text(self)
            if found is not None:
                raise ValueError(f"{found[0]}: {found[1]}")
        return self

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
    READS: ClassVar[tuple[str, ...]] = ("task/1",)

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
    READS: ClassVar[tuple[str, ...]] = ("lab-result/1",)

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
    READS: ClassVar[tuple[str, ...]] = ("verdict/1",)

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
    """Rejected input: the payload as received, where it came from and why it was refused. It carries
    whatever was refused (NUL included); `raw()` gives the payload's bytes exactly."""

    SCHEMA: ClassVar[str] = "dead-letter/2"
    READS: ClassVar[tuple[str, ...]] = ("dead-letter/1", "dead-letter/2")  # /2: payload_base64
    TEXT_MUST_BE_STORABLE: ClassVar[bool] = False

    letter_id: str
    source: str
    key: str | None = None
    payload: str  # as text: the bytes decoded as UTF-8, or shown escaped when they are not UTF-8
    payload_base64: str | None = None  # the bytes, when they are not UTF-8 text
    reason: str
    rejected_at: AwareDatetime

    def raw(self) -> bytes:
        """The refused payload, byte for byte."""
        if self.payload_base64 is not None:
            return base64.b64decode(self.payload_base64)
        return self.payload.encode("utf-8", "surrogatepass")

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
        binary = payload if isinstance(payload, bytes) and body.encode() != payload else None
        digest = hashlib.sha256(
            "\x1f".join((source, origin, key_text or "", body, reason)).encode("utf-8", "surrogatepass")
        )
        return cls(
            letter_id=digest.hexdigest()[:32],
            source=source,
            key=key_text,
            payload=body,
            payload_base64=None if binary is None else base64.b64encode(binary).decode(),
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
