"""Laboratories: their accreditation scope, the rules a reported result must pass, their API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spotcheck.errors import InvalidInput
from spotcheck.events import Ident, LabResult, SamplingTask
from spotcheck.specs import Spec
from spotcheck.units import unit_key

KEY_PREFIX = "sclab"


class ScopeEntry(BaseModel):
    """Part of an accreditation: specs (an id or a pattern such as `GB17930-2016:*`) or a product
    category (as the catalog names it, e.g. `motor diesel`), and the items it covers (all if none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: str | None = Field(default=None, min_length=1, max_length=64)
    product: str | None = Field(default=None, min_length=1, max_length=100)
    items: tuple[str, ...] | None = None

    @field_validator("items")
    @classmethod
    def _some_items(cls, items: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if items is not None and not items:
            raise ValueError("list at least one item, or leave items out for all of them")
        return items

    def covers(self, spec_id: str, product: str, item: str) -> bool:
        if self.spec is not None and not fnmatchcase(spec_id, self.spec):
            return False
        if self.product is not None and self.product != product:
            return False
        if self.spec is None and self.product is None:
            return False
        return self.items is None or item in self.items


class Lab(BaseModel):
    """A testing laboratory of the registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lab_id: Ident
    name: str = Field(min_length=1, max_length=200)
    scope: tuple[ScopeEntry, ...] = Field(min_length=1)
    daily_capacity: int = Field(default=50, ge=0, description="samples the lab can take a day")
    contact: str | None = Field(default=None, max_length=200)
    enabled: bool = True

    def covers(self, spec_id: str, product: str, item: str) -> bool:
        return any(entry.covers(spec_id, product, item) for entry in self.scope)


@dataclass(frozen=True)
class Refusal:
    """Why a result is refused: the reason, the field at fault, and whether it is a matter of
    permission (forbidden: another lab's task, outside the accreditation) or of content."""

    reason: str
    field: str
    forbidden: bool = True


def result_refusal(lab: Lab | None, task: SamplingTask, spec: Spec, result: LabResult) -> Refusal | None:
    """Why a lab may not report this result for this task, or None. The same rule for every way in
    (HTTP, files, Kafka); `spec` is the task's spec from the catalog."""
    if result.task_id != task.task_id:
        return Refusal(f"result is for task {result.task_id}, not {task.task_id}", "task_id", False)
    if result.lab_id != task.lab_id:
        return Refusal(
            f"task {task.task_id} is assigned to lab {task.lab_id}, not {result.lab_id}", "task_id"
        )
    if lab is None:
        return Refusal(f"lab {result.lab_id} is not in the registry", "lab_id")
    if not lab.enabled:
        return Refusal(f"lab {lab.lab_id} is disabled", "lab_id")
    if not lab.covers(task.spec, spec.product, result.item):
        return Refusal(
            f"item {result.item!r} of {task.spec} is outside the accreditation scope of lab {lab.lab_id}",
            "item",
        )
    if spec.has(result.item):
        wanted = spec.item(result.item).unit
        if result.unit and wanted and unit_key(result.unit) != unit_key(wanted):
            return Refusal(
                f"unit {result.unit!r} is not the unit of {result.item} in {task.spec} "
                f"({wanted}); convert the value before sending it",
                "unit",
                False,
            )
    return None


def new_key(kind: str = KEY_PREFIX) -> tuple[str, str, str]:
    """A new API key: (the key to hand out once, its public prefix, the hash to keep). `kind` starts
    the key and tells keys of different holders apart (labs: sclab, inspectors: scins)."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(24)
    key = f"{kind}_{prefix}_{secret}"
    return key, prefix, key_hash(key)


def key_prefix(key: str, kind: str = KEY_PREFIX) -> str | None:
    """The public prefix of a key of `kind` as handed out, or None if it is not shaped like one."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or len(parts[1]) != 8:
        return None
    return parts[1]


def key_hash(key: str) -> str:
    """Keys are long random strings, so one SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(key), stored_hash)


def check_assignment(lab: Lab | None, lab_id: str, spec_id: str, product: str, items: Sequence[str]) -> None:
    """A task may go only to a registered, enabled lab accredited for every planned item."""
    if lab is None:
        raise InvalidInput(f"lab {lab_id} is not in the registry (`spotcheck labs add`)", field="lab_id")
    if not lab.enabled:
        raise InvalidInput(f"lab {lab_id} is disabled", field="lab_id")
    outside = [item for item in items if not lab.covers(spec_id, product, item)]
    if outside:
        raise InvalidInput(
            f"lab {lab_id} is not accredited for {', '.join(outside)} of {spec_id}", field="lab_id"
        )


def unknown_scope_items(lab: Lab, known: set[str]) -> list[str]:
    """Item codes a scope names that no spec of the catalog has (typos)."""
    return sorted({i for entry in lab.scope for i in (entry.items or ())} - known)
