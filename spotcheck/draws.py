"""Double-random draws (双随机): the directory snapshot, the plan, and the pure, reproducible draw.

A draw depends only on (plan, snapshot, seed, history): the randomness comes from a stream derived
from the published seed with HMAC-SHA256, every choice uses integer arithmetic only (no floats, no
`random` module), and everything is iterated in a canonical order (sorted by id). Anyone holding the
published inputs can re-run it (`verify`) and get the same result, byte for byte.

The stream and the integer arithmetic are described in `spotcheck.draw_stats`. The streams used:
`enterprises/<category index>/<stratum as canonical JSON>` (strata in sorted order), then, for the
n-th drawn enterprise in draw order, `inspectors/<n>` and `labs/<n>`.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Any, ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from spotcheck.draw_stats import SeedStream, allocate
from spotcheck.errors import InvalidInput
from spotcheck.events import Event, Ident
from spotcheck.labs import Lab
from spotcheck.registry import Enterprise as Enterprise
from spotcheck.registry import EnterpriseId as EnterpriseId
from spotcheck.registry import EnterpriseKind as EnterpriseKind
from spotcheck.registry import Inspector as Inspector
from spotcheck.registry import LicenceStatus as LicenceStatus
from spotcheck.registry import _sorted_unique
from spotcheck.specs import Catalog, load_catalog

MIN_SEED_BYTES = 16
NEVER_CHECKED_MONTHS = 36

StratumKey = Literal["district", "kind"]


def _by_id(records: tuple[Any, ...], attr: str, what: str) -> tuple[Any, ...]:
    """The records sorted by id; an id listed twice is refused."""
    ids = [getattr(r, attr) for r in records]
    doubles = sorted({i for i in ids if ids.count(i) > 1})
    if doubles:
        raise ValueError(f"{what} listed twice: {', '.join(doubles)}")
    return tuple(sorted(records, key=lambda r: getattr(r, attr)))


class Snapshot(BaseModel):
    """The directory as it stood when the draw was made; records are kept sorted by id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enterprises: tuple[Enterprise, ...]
    inspectors: tuple[Inspector, ...]
    labs: tuple[Lab, ...]
    taken_at: AwareDatetime

    @field_validator("enterprises")
    @classmethod
    def _enterprises(cls, records: tuple[Enterprise, ...]) -> tuple[Enterprise, ...]:
        return _by_id(records, "enterprise_id", "enterprise")

    @field_validator("inspectors")
    @classmethod
    def _inspectors(cls, records: tuple[Inspector, ...]) -> tuple[Inspector, ...]:
        return _by_id(records, "inspector_id", "inspector")

    @field_validator("labs")
    @classmethod
    def _labs(cls, records: tuple[Lab, ...]) -> tuple[Lab, ...]:
        return _by_id(records, "lab_id", "lab")

    def digest(self) -> str:
        """SHA-256 of the records (not of `taken_at`): the same directory always hashes the same."""
        return sha256_hex(self.model_dump(mode="json", exclude={"taken_at"}))


class RiskFactors(BaseModel):
    """What raises an enterprise's chance of being drawn; see `weight`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: int = Field(default=0, ge=0, le=1000, description="unqualified results in the past years")
    complaints: int = Field(default=0, ge=0, le=1000)
    months_since_check: int | None = Field(default=None, ge=0, description="None: never checked")

    @property
    def weight(self) -> int:
        """1 + 2·failures + complaints + ⌊min(months since last check, 36) / 12⌋; never checked
        counts as 36 months. An integer ≥ 1, so the draw needs no floating point."""
        months = NEVER_CHECKED_MONTHS if self.months_since_check is None else self.months_since_check
        return 1 + 2 * self.failures + self.complaints + min(months, NEVER_CHECKED_MONTHS) // 12


class PlanCategory(BaseModel):
    """One product line of a plan: which product, the spec the tasks use, how many enterprises."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product: str = Field(min_length=1, max_length=200)
    spec: str = Field(min_length=1, max_length=64)
    items: tuple[str, ...] | None = Field(default=None, description="all items of the spec if None")
    kinds: tuple[EnterpriseKind, ...] | None = Field(
        default=None, description="only enterprises of these kinds (e.g. filling stations); all if None"
    )
    count: int | None = Field(default=None, ge=1)
    ratio: Decimal | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _count_or_ratio(self) -> Self:
        if (self.count is None) == (self.ratio is None):
            raise ValueError("give either count or ratio")
        if self.items is not None and not self.items:
            raise ValueError("list at least one item, or leave items out for all of them")
        return self

    def wanted(self, eligible: int) -> int:
        """How many enterprises to draw: the count, or ratio × eligible rounded half up, at least 1
        when any is eligible."""
        if self.count is not None:
            return self.count
        assert self.ratio is not None
        if eligible == 0:
            return 0
        return max(1, int((self.ratio * eligible).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


class Plan(BaseModel):
    """A spot-check plan: what to draw and under which rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: Ident
    draw_date: date
    categories: tuple[PlanCategory, ...] = Field(min_length=1)
    strata: tuple[StratumKey, ...] = ()
    risk: dict[EnterpriseId, RiskFactors] = Field(default_factory=dict)
    higher_level: tuple[EnterpriseId, ...] = Field(default=(), description="checked by a higher level")
    recent_checks: dict[EnterpriseId, date] = Field(default_factory=dict, description="last check date")
    recent_months: int = Field(default=12, ge=0, description="skip enterprises checked this recently")
    excluded_licences: tuple[LicenceStatus, ...] = (LicenceStatus.REVOKED,)
    inspectors_per_task: int = Field(default=2, ge=2)
    max_tasks_per_inspector: int = Field(default=10, ge=1)
    lab_days: int = Field(default=1, ge=1, description="days of lab intake the draw may fill")

    @field_validator("higher_level")
    @classmethod
    def _canonical(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _sorted_unique(values)

    @field_validator("strata")
    @classmethod
    def _strata_once(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(keys)) != len(keys):
            raise ValueError("a stratum key is listed twice")
        return keys

    def weight(self, enterprise_id: str) -> int:
        factors = self.risk.get(enterprise_id)
        return 1 if factors is None else factors.weight

    def recent_cutoff(self) -> date:
        """Checked after this day means checked recently: N months before the draw date."""
        return months_before(self.draw_date, self.recent_months)

    def digest(self) -> str:
        return sha256_hex(self.model_dump(mode="json"))


class UnfilledReason(StrEnum):
    TOO_FEW_ENTERPRISES = "too-few-enterprises"
    TOO_FEW_INSPECTORS = "too-few-inspectors"
    NO_LAB = "no-lab"


class ExclusionReason(StrEnum):
    HIGHER_LEVEL = "higher-level"
    RECENT_CHECK = "recent-check"
    LICENCE = "licence"


class Selection(BaseModel):
    """A drawn enterprise with its inspectors and lab: a sampling task to create."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enterprise_id: EnterpriseId
    product: str
    spec: str
    items: tuple[str, ...]
    stratum: dict[str, str]
    weight: int
    inspectors: tuple[str, ...]
    lab_id: str


class Unfilled(BaseModel):
    """A place of the plan that could not be filled, and why (never dropped silently)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product: str
    spec: str
    stratum: dict[str, str]
    enterprise_id: EnterpriseId | None = None
    reason: UnfilledReason
    detail: str


class Exclusion(BaseModel):
    """An enterprise that makes or sells the product but could not be drawn, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enterprise_id: EnterpriseId
    product: str
    reason: ExclusionReason


class DrawResult(Event):
    """The published outcome of a draw, with everything needed to check it."""

    SCHEMA: ClassVar[str] = "draw/1"

    plan_id: Ident
    draw_date: date
    seed: str = Field(pattern=r"^[0-9a-f]+$")
    snapshot_digest: str
    plan_digest: str
    history_digest: str
    selections: tuple[Selection, ...]
    unfilled: tuple[Unfilled, ...]
    excluded: tuple[Exclusion, ...]

    def digest(self) -> str:
        return sha256_hex(self.model_dump(mode="json", by_alias=True))


# --- helpers -----------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys, no spaces, UTF-8: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def history_digest(history: Mapping[str, Iterable[str]]) -> str:
    return sha256_hex(_canonical_history(history))


def _canonical_history(history: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    return {key: sorted(set(history[key])) for key in sorted(history)}


def months_before(day: date, months: int) -> date:
    """The same day-of-month `months` earlier (clamped to the month's last day)."""
    total = day.year * 12 + (day.month - 1) - months
    year, month = divmod(total, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def new_seed() -> bytes:
    """A fresh seed from the operating system's secure source, to publish with the draw."""
    return secrets.token_bytes(32)


# --- the draw ----------------------------------------------------------------------------------


def _stratum(enterprise: Enterprise, keys: Sequence[str]) -> dict[str, str]:
    values = {"district": enterprise.district, "kind": enterprise.kind.value}
    return {key: values[key] for key in keys}


def _label(stratum: Mapping[str, str]) -> str:
    return canonical_json(dict(stratum)).decode()


def _check_inputs(plan: Plan, seed: bytes, catalog: Catalog) -> list[tuple[str, ...]]:
    if len(seed) < MIN_SEED_BYTES:
        raise InvalidInput(f"a seed needs at least {MIN_SEED_BYTES} bytes", field="seed")
    resolved = []
    for category in plan.categories:
        spec = catalog.get(category.spec)
        if spec.product != category.product:
            raise InvalidInput(
                f"spec {spec.id} is for {spec.product}, not {category.product}", field="categories"
            )
        for item in category.items or ():
            spec.item(item)
        resolved.append(category.items or spec.codes)
    return resolved


def draw(
    plan: Plan,
    snapshot: Snapshot,
    seed: bytes,
    history: Mapping[str, Iterable[str]] | None = None,
    *,
    catalog: Catalog | None = None,
) -> DrawResult:
    """Draw enterprises, then inspectors and a lab for each, reproducibly from `seed`.

    `history` maps an enterprise id to the inspectors of its last check (they may not go again).
    Raises InvalidInput for a short seed or a category whose spec is unknown or of another product.
    """
    history = _canonical_history(history or {})
    item_lists = _check_inputs(plan, seed, catalog or load_catalog())
    cutoff = plan.recent_cutoff()
    higher = set(plan.higher_level)
    picked: list[tuple[int, Enterprise, dict[str, str]]] = []
    unfilled: list[Unfilled] = []
    excluded: list[Exclusion] = []

    for index, category in enumerate(plan.categories):
        strata: dict[str, list[Enterprise]] = {}
        for enterprise in snapshot.enterprises:
            if category.product not in enterprise.products:
                continue
            if category.kinds is not None and enterprise.kind not in category.kinds:
                continue
            reason = _excluded(plan, enterprise, higher, cutoff)
            if reason is not None:
                excluded.append(
                    Exclusion(enterprise_id=enterprise.enterprise_id, product=category.product, reason=reason)
                )
                continue
            strata.setdefault(_label(_stratum(enterprise, plan.strata)), []).append(enterprise)
        eligible = sum(len(members) for members in strata.values())
        wanted = category.wanted(eligible)
        shares = allocate(min(wanted, eligible), {key: len(members) for key, members in strata.items()})
        for key in sorted(strata):
            members = {e.enterprise_id: e for e in strata[key]}
            stream = SeedStream(seed, f"enterprises/{index}/{key}")
            chosen = stream.weighted_sample({eid: plan.weight(eid) for eid in members}, shares[key])
            stratum = _stratum(strata[key][0], plan.strata)
            picked.extend((index, members[eid], stratum) for eid in chosen)
        if wanted > eligible:
            unfilled.append(
                Unfilled(
                    product=category.product,
                    spec=category.spec,
                    stratum={},
                    reason=UnfilledReason.TOO_FEW_ENTERPRISES,
                    detail=f"{wanted} wanted, {eligible} eligible",
                )
            )

    selections = _assign(plan, snapshot, seed, history, item_lists, picked, unfilled)
    return DrawResult(
        plan_id=plan.plan_id,
        draw_date=plan.draw_date,
        seed=seed.hex(),
        snapshot_digest=snapshot.digest(),
        plan_digest=plan.digest(),
        history_digest=history_digest(history),
        selections=tuple(selections),
        unfilled=tuple(unfilled),
        excluded=tuple(excluded),
    )


def _excluded(plan: Plan, enterprise: Enterprise, higher: set[str], cutoff: date) -> ExclusionReason | None:
    if enterprise.enterprise_id in higher:
        return ExclusionReason.HIGHER_LEVEL
    last = plan.recent_checks.get(enterprise.enterprise_id)
    if last is not None and plan.recent_months > 0 and last > cutoff:
        return ExclusionReason.RECENT_CHECK
    if enterprise.licence_status in plan.excluded_licences:
        return ExclusionReason.LICENCE
    return None


def _assign(
    plan: Plan,
    snapshot: Snapshot,
    seed: bytes,
    history: Mapping[str, list[str]],
    item_lists: list[tuple[str, ...]],
    picked: list[tuple[int, Enterprise, dict[str, str]]],
    unfilled: list[Unfilled],
) -> list[Selection]:
    """Inspectors and a lab for each drawn enterprise, in draw order; both or neither."""
    inspector_load = {i.inspector_id: 0 for i in snapshot.inspectors}
    lab_load = {lab.lab_id: 0 for lab in snapshot.labs}
    selections: list[Selection] = []
    for task, (index, enterprise, stratum) in enumerate(picked):
        category = plan.categories[index]
        items = item_lists[index]
        eid = enterprise.enterprise_id
        team = _team(plan, snapshot, SeedStream(seed, f"inspectors/{task}"), eid, history, inspector_load)
        lab_id = _lab(plan, snapshot, SeedStream(seed, f"labs/{task}"), category, items, lab_load)
        if len(team) < plan.inspectors_per_task or lab_id is None:
            if len(team) < plan.inspectors_per_task:
                reason = UnfilledReason.TOO_FEW_INSPECTORS
                detail = (
                    f"{len(team)} of {plan.inspectors_per_task} inspectors free of conflicts "
                    "and under the workload cap"
                )
            else:
                reason = UnfilledReason.NO_LAB
                detail = (
                    f"no enabled lab accredited for {category.spec} ({', '.join(items)}) has capacity left"
                )
            unfilled.append(
                Unfilled(
                    product=category.product,
                    spec=category.spec,
                    stratum=stratum,
                    enterprise_id=eid,
                    reason=reason,
                    detail=detail,
                )
            )
            continue
        for inspector_id in team:
            inspector_load[inspector_id] += 1
        lab_load[lab_id] += 1
        selections.append(
            Selection(
                enterprise_id=eid,
                product=category.product,
                spec=category.spec,
                items=items,
                stratum=stratum,
                weight=plan.weight(eid),
                inspectors=team,
                lab_id=lab_id,
            )
        )
    return selections


def _team(
    plan: Plan,
    snapshot: Snapshot,
    stream: SeedStream,
    enterprise_id: str,
    history: Mapping[str, list[str]],
    load: Mapping[str, int],
) -> tuple[str, ...]:
    """Up to `inspectors_per_task` inspectors (sorted by id): none excluded from the enterprise
    (回避), none of its last check, none at the workload cap; least loaded first, random among ties."""
    last_time = set(history.get(enterprise_id, ()))
    free = [
        i.inspector_id
        for i in snapshot.inspectors
        if enterprise_id not in i.excluded_enterprises
        and i.inspector_id not in last_time
        and load[i.inspector_id] < plan.max_tasks_per_inspector
    ]
    ranked = sorted(stream.shuffled(free), key=lambda i: load[i])  # sort is stable: ties stay shuffled
    return tuple(sorted(ranked[: plan.inspectors_per_task]))


def _lab(
    plan: Plan,
    snapshot: Snapshot,
    stream: SeedStream,
    category: PlanCategory,
    items: Sequence[str],
    load: Mapping[str, int],
) -> str | None:
    """An enabled lab accredited for every item with capacity left (daily capacity × lab_days),
    the least used share of capacity first, random among ties; None if there is none."""
    capacity = {lab.lab_id: lab.daily_capacity * plan.lab_days for lab in snapshot.labs}
    fit = [
        lab.lab_id
        for lab in snapshot.labs
        if lab.enabled
        and load[lab.lab_id] < capacity[lab.lab_id]
        and all(lab.covers(category.spec, category.product, item) for item in items)
    ]
    ranked = sorted(stream.shuffled(fit), key=lambda lab_id: Fraction(load[lab_id], capacity[lab_id]))
    return ranked[0] if ranked else None


def verify(
    result: DrawResult,
    plan: Plan,
    snapshot: Snapshot,
    seed: bytes,
    history: Mapping[str, Iterable[str]] | None = None,
    *,
    catalog: Catalog | None = None,
) -> bool:
    """Whether `result` is exactly what these published inputs draw."""
    if result.seed != seed.hex():
        return False
    again = draw(plan, snapshot, seed, history, catalog=catalog)
    return again == result and again.digest() == result.digest()
